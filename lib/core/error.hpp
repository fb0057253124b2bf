#pragma once
// The one error type of the library. Library code never prints or exits: it throws
// vmoe::Error with a message that names what went wrong and where; the CLI catches it
// once and maps it to the exit code.
//
// Error messages echo strings that come from files and command lines (paths, tensor
// names, config values, other libraries' messages). Every such string goes through
// printable(): control characters and invalid UTF-8 are escaped as \xNN, so a message
// stays one line and cannot drive the terminal, and its length is capped. fail() applies
// it to each string argument itself; the CLI applies it once more to the whole line.
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>

#include <fmt/format.h>

namespace vmoe {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error(what) {}
};

// Longest echo of one string in a message (bytes of the original, before escaping).
inline constexpr size_t kMaxEchoBytes = 200;

// `text` with control characters (C0, DEL, C1) and bytes that are not valid UTF-8
// written as \xNN, cut after `max_bytes` bytes of input with "...(N bytes)" appended.
// Printable text, including valid UTF-8, passes unchanged, so applying it twice is the
// same as applying it once (up to the cap).
std::string printable(std::string_view text, size_t max_bytes = kMaxEchoBytes);

namespace detail {
template <typename T>
decltype(auto) echo(T&& value) {
  if constexpr (std::is_convertible_v<const std::decay_t<T>&, std::string_view>)
    return printable(std::string_view(value));
  else
    return std::forward<T>(value);
}
}  // namespace detail

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> format, Args&&... args) {
  // The format was checked against Args at compile time; strings only become strings.
  throw Error(fmt::format(fmt::runtime(fmt::string_view(format)), detail::echo(std::forward<Args>(args))...));
}

}  // namespace vmoe
