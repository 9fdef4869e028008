#include "commands.hpp"
#include "common.hpp"

namespace luksforge::cli {
void register_luks_commands(CLI::App&) {}
}  // namespace luksforge::cli
