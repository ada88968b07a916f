// Every op refuses the bad inputs of tests/tensor/op_contract_cases.h on the CPU with a ShapeError that names
// the op, and the table covers every op of tensor/op_declarations.inc (DSMIL_OP_DECLARATIONS, the file's path).
#include <doctest/doctest.h>

#include <fstream>
#include <regex>
#include <set>

#include "tests/tensor/op_contract_cases.h"

using namespace dsmil;

namespace {

// The names the .inc declares: a declaration starts at column 0 with its return type.
std::set<std::string> declared_ops() {
  std::ifstream in(DSMIL_OP_DECLARATIONS);
  REQUIRE(in.good());
  const std::regex declaration(R"(^[A-Za-z_][\w:<>]*\s+(\w+)\()");
  std::set<std::string> names;
  std::smatch match;
  for (std::string line; std::getline(in, line);)
    if (std::regex_search(line, match, declaration)) names.insert(match[1]);
  return names;
}

}  // namespace

TEST_CASE("every op refuses its bad inputs with a ShapeError naming the op") {
  for (const test::OpContractCase& c : test::op_contract_cases(Device::CPU)) {
    CAPTURE(c.op);
    CAPTURE(c.fragment);
    std::string message = "(no ShapeError)";
    try {
      c.call();
    } catch (const ShapeError& e) {
      message = e.what();
    }
    CAPTURE(message);
    CHECK(message.rfind(c.op + ": ", 0) == 0);
    CHECK(message.find(c.fragment) != std::string::npos);
  }
}

TEST_CASE("the contract table has a bad input for every op of op_declarations.inc") {
  const std::set<std::string> declared = declared_ops();
  REQUIRE(declared.count("matmul") == 1);  // the parser still reads the file's declarations
  std::set<std::string> covered;
  for (const test::OpContractCase& c : test::op_contract_cases(Device::CPU)) covered.insert(c.op);
  for (const std::string& op : declared) {
    CAPTURE(op);
    CHECK(covered.count(op) == 1);
  }
  for (const std::string& op : covered) {
    CAPTURE(op);
    CHECK(declared.count(op) == 1);
  }
}
