#pragma once
// Files the tool writes appear whole or not at all: write to a temporary name in the
// same directory, fsync, then rename over the target.
#include <functional>
#include <ostream>
#include <string>

namespace vmoe {

void write_file_atomically(const std::string& path, const std::function<void(std::ostream&)>& write);

}  // namespace vmoe
