#pragma once
// The one error type of the library. Library code never prints or exits: it throws
// vmoe::Error with a message that names what went wrong and where; the CLI catches it
// once and maps it to the exit code.
#include <stdexcept>
#include <string>

#include <fmt/format.h>

namespace vmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  throw Error(fmt::format(format, std::forward<Args>(args)...));
}

}  // namespace vmoe
