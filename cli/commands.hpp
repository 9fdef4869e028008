// Subcommand groups of the `luksforge` CLI. Each group lives in its own cli/*_commands.cpp and registers its
// subcommands on the app; main.cpp calls every register function below.
//
// Pattern for a subcommand:
//   auto* cmd = app.add_subcommand("name", "one line of help");
//   auto opts = std::make_shared<Options>();          // options bound to CLI11 live as long as the app
//   cmd->add_option("IMAGE", opts->image, "...")->required();
//   luksforge::cli::set_action(*cmd, [opts] { ...; return 0; });   // return the exit code
// Errors are reported by throwing luksforge exceptions; main.cpp maps them to exit codes (see docs/cli.md).
#pragma once

#include <CLI/CLI.hpp>

namespace luksforge::cli {

void register_luks_commands(CLI::App& app);
// Added by the other areas (declare here, define in your own file, call from main.cpp):
void register_clevis_commands(CLI::App& app);
void register_policy_commands(CLI::App& app);
void register_image_commands(CLI::App& app);
void register_kickstart_commands(CLI::App& app);

}  // namespace luksforge::cli
