// Helpers shared by every CLI subcommand group: the action registry, secret input, sizes, JSON output and a
// progress bar.
#pragma once

#include <luksforge/secret.hpp>

#include <CLI/CLI.hpp>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

namespace luksforge::cli {

// Exit codes (docs/cli.md).
enum ExitCode : int {
    exit_ok = 0,
    exit_error = 1,
    exit_usage = 2,
    exit_auth = 3,
    exit_not_found = 4,
    exit_busy = 5,
    exit_tang = 6,
    exit_format = 7,
};

// Attach the code to run when `cmd` is chosen; main.cpp runs it after parsing (inside its error handling).
void set_action(CLI::App& cmd, std::function<int()> action);
// The action of the subcommand chosen on the command line (deepest one), or null.
std::function<int()> chosen_action(const CLI::App& app);

// A secret source on the command line: `--NAME-file FILE` ("-" = stdin) or `--NAME-fd N`. Never argv.
struct SecretOption {
    std::string file;
    int fd = -1;
    bool required = false;   // set by add_secret_option
    std::string name;        // option stem, for messages
    bool given() const { return !file.empty() || fd >= 0; }
    // Read it (exactly like cryptsetup --key-file: every byte). Throws FormatError if none was given.
    SecretBuffer read(std::string_view what = "passphrase") const;
};
// Adds `--<name>-file` and `--<name>-fd` to `cmd`; `name` e.g. "passphrase", "new-passphrase".
void add_secret_option(CLI::App& cmd, SecretOption& option, const std::string& name, const std::string& help,
                       bool required = false);
// Repeatable `--<name>-file` (each "-" = stdin, at most once).
void add_secret_files_option(CLI::App& cmd, std::vector<std::string>& files, const std::string& name,
                             const std::string& help, bool required = false);
SecretBuffer read_secret_argument(const std::string& file);

// "64M", "1G", "4096", "512K", "2T", "1.5G" (binary units, optional "iB"/"B"). Throws FormatError.
std::uint64_t parse_size(std::string_view text);
// A CLI11 validator accepting parse_size() syntax.
CLI::Validator size_validator();

// Print JSON text (from the library) followed by a newline on stdout.
void print_json(const std::string& json_text);
// `text` as a JSON string literal, quotes included, for output the CLI assembles itself.
std::string json_quote(std::string_view text);

// A one-line progress bar on stderr, drawn only when stderr is a terminal.
class ProgressBar {
public:
    explicit ProgressBar(std::string label);
    ~ProgressBar();
    void update(std::uint64_t done, std::uint64_t total);
    void finish();

private:
    std::string label_;
    bool enabled_ = false;
    bool finished_ = false;
    int last_permille_ = -1;
};

}  // namespace luksforge::cli
