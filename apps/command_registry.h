// Subcommands of `dsmil` register themselves here from their own cmd_*.cpp file, so that adding a
// command touches one file. Each registrar adds a CLI11 subcommand and its callback.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <string>
#include <vector>

#include "apps/train/cv.h"

namespace dsmil::app {

struct CommandSpec {
  std::string name;
  int order;  // position in `dsmil --help`
  std::function<void(CLI::App& root)> add;
};

std::vector<CommandSpec>& command_registry();

// Checks a --folds value ("0,2,3") while the command line is parsed, so that a bad one is a usage error.
inline CLI::Validator fold_list_validator() {
  return CLI::Validator(
      [](std::string& text) -> std::string {
        try {
          parse_fold_list(text);
        } catch (const std::exception& e) {
          return e.what();
        }
        return {};
      },
      "FOLDS");
}

struct RegisterCommand {
  RegisterCommand(std::string name, int order, std::function<void(CLI::App& root)> add) {
    command_registry().push_back({std::move(name), order, std::move(add)});
  }
};

}  // namespace dsmil::app
