// Subcommands of `dsmil` register themselves here from their own cmd_*.cpp file, so that adding a
// command touches one file. Each registrar adds a CLI11 subcommand and its callback.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

namespace dsmil::app {

struct CommandSpec {
  std::string name;
  int order;  // position in `dsmil --help`
  std::function<void(CLI::App& root)> add;
};

std::vector<CommandSpec>& command_registry();

struct RegisterCommand {
  RegisterCommand(std::string name, int order, std::function<void(CLI::App& root)> add) {
    command_registry().push_back({std::move(name), order, std::move(add)});
  }
};

}  // namespace dsmil::app
