#include "common.hpp"

#include <luksforge/error.hpp>

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <map>

namespace luksforge::cli {
namespace {

std::map<const CLI::App*, std::function<int()>>& actions() {
    static std::map<const CLI::App*, std::function<int()>> registry;
    return registry;
}

}  // namespace

void set_action(CLI::App& cmd, std::function<int()> action) {
    actions()[&cmd] = std::move(action);
    // Keep the registry alive and discoverable: CLI11 requires a callback for final_callback-less subcommands.
}

std::function<int()> chosen_action(const CLI::App& app) {
    for (const CLI::App* sub : app.get_subcommands()) {
        if (auto inner = chosen_action(*sub)) return inner;
        if (auto it = actions().find(sub); it != actions().end()) return it->second;
    }
    return {};
}

SecretBuffer read_secret_argument(const std::string& file) { return read_secret_file(file); }

SecretBuffer SecretOption::read(std::string_view what) const {
    if (!file.empty()) return read_secret_file(file);
    if (fd >= 0) return read_secret_fd(fd);
    if (required) throw CLI::RequiredError("--" + name + "-file or --" + name + "-fd");
    throw FormatError("no " + std::string(what) + " given (use a file, file descriptor or \"-\" for stdin)");
}

void add_secret_option(CLI::App& cmd, SecretOption& option, const std::string& name, const std::string& help,
                       bool required) {
    auto* file = cmd.add_option("--" + name + "-file", option.file, help + " from FILE (\"-\" = stdin)")
                     ->type_name("FILE");
    auto* fd = cmd.add_option("--" + name + "-fd", option.fd, help + " from file descriptor N")->type_name("N");
    file->excludes(fd);
    // CLI11 has no "one of these two" constraint; a missing required secret is reported as a usage error
    // when the action reads it (SecretOption::read).
    option.required = required;
    option.name = name;
}

void add_secret_files_option(CLI::App& cmd, std::vector<std::string>& files, const std::string& name,
                             const std::string& help, bool required) {
    auto* opt = cmd.add_option("--" + name + "-file", files, help + " (repeatable; \"-\" = stdin)")
                    ->type_name("FILE")
                    ->allow_extra_args(false)
                    ->multi_option_policy(CLI::MultiOptionPolicy::TakeAll);
    if (required) opt->required();
}

std::uint64_t parse_size(std::string_view text) {
    std::string s(text);
    if (s.empty()) throw FormatError("empty size");
    std::size_t pos = 0;
    double value = 0;
    try {
        value = std::stod(s, &pos);
    } catch (...) {
        throw FormatError("invalid size \"" + s + "\" (examples: 4096, 512K, 64M, 1G)");
    }
    std::string unit = s.substr(pos);
    if (unit.size() >= 2 && (unit.substr(unit.size() - 2) == "iB" || unit.substr(unit.size() - 2) == "ib"))
        unit.resize(unit.size() - 2);
    else if (unit.size() >= 2 && (unit.back() == 'B' || unit.back() == 'b'))
        unit.pop_back();
    std::uint64_t multiplier = 1;
    if (unit.empty() || unit == "B" || unit == "b") multiplier = 1;
    else if (unit == "K" || unit == "k") multiplier = 1ull << 10;
    else if (unit == "M" || unit == "m") multiplier = 1ull << 20;
    else if (unit == "G" || unit == "g") multiplier = 1ull << 30;
    else if (unit == "T" || unit == "t") multiplier = 1ull << 40;
    else throw FormatError("invalid size unit in \"" + s + "\" (use K, M, G or T)");
    if (!(value >= 0) || !std::isfinite(value)) throw FormatError("invalid size \"" + s + "\"");
    const long double bytes = static_cast<long double>(value) * multiplier;
    if (bytes > 18446744073709551615.0L) throw FormatError("size \"" + s + "\" is too large");
    if (bytes != std::floor(bytes)) throw FormatError("size \"" + s + "\" is not a whole number of bytes");
    return static_cast<std::uint64_t>(bytes);
}

CLI::Validator size_validator() {
    return CLI::Validator(
        [](std::string& input) -> std::string {
            try {
                parse_size(input);
                return {};
            } catch (const std::exception& e) {
                return e.what();
            }
        },
        "SIZE", "size");
}

void print_json(const std::string& json_text) {
    std::fwrite(json_text.data(), 1, json_text.size(), stdout);
    std::fputc('\n', stdout);
    std::fflush(stdout);
}

std::string json_quote(std::string_view text) {
    std::string out = "\"";
    for (char c : text) {
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (static_cast<unsigned char>(c) < 0x20) {
                    char escaped[8];
                    std::snprintf(escaped, sizeof escaped, "\\u%04x", static_cast<unsigned>(c));
                    out += escaped;
                } else {
                    out += c;
                }
        }
    }
    return out + "\"";
}

ProgressBar::ProgressBar(std::string label) : label_(std::move(label)), enabled_(::isatty(STDERR_FILENO) == 1) {}

ProgressBar::~ProgressBar() {
    if (enabled_ && !finished_ && last_permille_ >= 0) std::fputc('\n', stderr);
}

void ProgressBar::update(std::uint64_t done, std::uint64_t total) {
    if (!enabled_ || total == 0) return;
    const int permille = static_cast<int>(std::min<std::uint64_t>(1000, done * 1000 / total));
    if (permille == last_permille_) return;
    last_permille_ = permille;
    constexpr int width = 40;
    const int filled = permille * width / 1000;
    std::fprintf(stderr, "\r%s [%.*s%*s] %3d.%d%%", label_.c_str(), filled, "########################################",
                 width - filled, "", permille / 10, permille % 10);
    std::fflush(stderr);
}

void ProgressBar::finish() {
    if (!enabled_ || finished_) return;
    finished_ = true;
    if (last_permille_ >= 0) {
        update(1, 1);
        std::fputc('\n', stderr);
    }
}

}  // namespace luksforge::cli
