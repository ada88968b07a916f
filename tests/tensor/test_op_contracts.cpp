// Every op refuses the bad inputs of tests/tensor/op_contract_cases.h on the CPU with a ShapeError that names
// the op, and the table covers every op of tensor/op_declarations.inc (DSMIL_OP_DECLARATIONS, the file's path);
// and a few bad shapes, with the op's name in the message.
#include <doctest/doctest.h>

#include <fstream>
#include <regex>
#include <set>

#include "tests/tensor/op_contract_cases.h"
#include "tests/test_util.h"

using namespace dsmil;
using namespace dsmil::test;

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

TEST_CASE("ops reject bad shapes with a ShapeError naming the op") {
  CHECK_THROWS_AS(ops::add(random_tensor({2, 3}), random_tensor({3, 2})), ShapeError);
  CHECK_THROWS_AS(ops::matmul(random_tensor({2, 3}), random_tensor({2, 3}), false, false, MathMode{}), ShapeError);
  CHECK_THROWS_AS(ops::conv3d_forward(random_tensor({1, 2, 2, 2, 3}), random_tensor({1, 3, 3, 3, 4}),
                                      {{3, 3, 3}, {1, 1, 1}, {1, 1, 1}}, MathMode{}),
                  ShapeError);
  try {
    ops::add(random_tensor({2, 3}), random_tensor({3, 2}));
  } catch (const ShapeError& e) {
    CHECK(std::string(e.what()).find("add") != std::string::npos);
  }
}
