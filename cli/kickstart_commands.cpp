// `luksforge kickstart`: render one of the NBDE kickstart templates (lorax-templates/kickstarts/, compiled in)
// with the installation source, after checking the policy the installs bind, into a new file.
//
// The templates and what this writes hold no secret: each install's build passphrase is made by the
// kickstart's own %pre, in the installer's memory (see the templates), so a rendered kickstart may be committed,
// put on boot.iso or kept. The line `# @LUKSFORGE_INSTALLATION_SOURCE@` marks where the `url`/`repo` lines or an
// `%include` go.
#include "commands.hpp"
#include "common.hpp"
#include "kickstart_templates.hpp"

#include <luksforge/error.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/policy.hpp>

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace luksforge::cli {
namespace {

// Where templates before the %pre-made passphrase put a render-time one: refused with a pointer.
constexpr std::string_view old_passphrase_marker = "@LUKSFORGE_BUILD_PASSPHRASE@";
constexpr std::string_view source_marker_line = "# @LUKSFORGE_INSTALLATION_SOURCE@";

struct KickstartOptions {
    std::string kind = "lmc-make-disk";
    std::string template_file;
    std::string policy;
    std::string url;
    std::vector<std::string> repos;  // NAME=URL
    std::string include;
    std::string out;
    bool force = false;
};

// A word that must stay one kickstart word (pykickstart splits lines like a shell) and one shell word.
void check_word(const std::string& value, const std::string& what) {
    if (value.empty()) throw CLI::ValidationError(what, "must not be empty");
    for (char c : value)
        if (std::isspace(static_cast<unsigned char>(c)) || c == '"' || c == '\'' || c == '\\' || c == '#' ||
            c == '`' || c == '$')
            throw CLI::ValidationError(what, "\"" + value + "\" contains a character a kickstart line cannot carry");
}

void check_source_url(const std::string& url, const std::string& what) {
    check_word(url, what);
    for (std::string_view scheme : {"http://", "https://", "ftp://", "file://"})
        if (url.compare(0, scheme.size(), scheme) == 0 && url.size() > scheme.size()) return;
    throw CLI::ValidationError(what, "\"" + url + "\" is not an http://, https://, ftp:// or file:// URL");
}

// The installation source lines (documented parameters: anaconda's `url` and `repo`, or an `%include`).
std::string installation_source(const KickstartOptions& options) {
    if (options.url.empty() == options.include.empty())
        throw CLI::ValidationError("--url/--include", "give the installation source: --url URL or --include FILE");
    if (!options.include.empty()) {
        if (!options.repos.empty())
            throw CLI::ValidationError("--repo", "goes with --url (livemedia-creator allows repo only with url)");
        check_word(options.include, "--include");
        return "# Installation source (url/repo lines), included as livemedia-creator and anaconda read it.\n"
               "%include " + options.include + "\n";
    }
    check_source_url(options.url, "--url");
    std::string lines = "url --url=" + options.url + "\n";
    for (const std::string& repo : options.repos) {
        const std::size_t eq = repo.find('=');
        if (eq == std::string::npos || eq == 0)
            throw CLI::ValidationError("--repo", "\"" + repo + "\" is not NAME=URL");
        const std::string name = repo.substr(0, eq);
        if (!std::all_of(name.begin(), name.end(), [](char c) {
                return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
            }))
            throw CLI::ValidationError("--repo", "repository name \"" + name + "\" may hold only letters, digits, - _ .");
        check_source_url(repo.substr(eq + 1), "--repo");
        lines += "repo --name=" + name + " --baseurl=" + repo.substr(eq + 1) + "\n";
    }
    return lines;
}

std::string template_text(const KickstartOptions& options) {
    if (!options.template_file.empty()) {
        std::ifstream in(options.template_file, std::ios::binary);
        if (!in) throw NotFoundError("cannot read kickstart template " + options.template_file);
        return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    }
    const std::optional<std::string_view> builtin = builtin_kickstart_template(options.kind);
    if (!builtin) throw CLI::ValidationError("--kind", "\"" + options.kind + "\" is not lmc-make-disk or virt-install");
    return std::string(*builtin);
}

// The policy the installs bind (through the runtime template's verified advertisements): valid, no
// trust-on-first-use, and seal and stamp must fit the 16 KiB LUKS2 metadata anaconda always makes.
void check_policy(const std::string& path) {
    Policy policy = Policy::load(path);
    policy.require_valid();
    policy.require_no_tpm2("kickstart");  // its templates bind Tang servers only (and verify them at render time)
    if (policy.trust_on_first_use)
        throw FormatError("policy " + path + " allows trust_on_first_use: an install must bind to pinned or offline "
                          "advertisements");
    // Measured exactly: the servers' advertisements are fetched (trusted as the policy says) when not offline.
    const Policy::PipelineFit fit = policy.pipeline_fit(Policy::metadata_sizes[0], NetworkOptions{});
    if (!fit.fits()) {
        std::string message = "policy " + path + ": anaconda formats LUKS2 with 16 KiB of metadata, and with this policy's " +
                              std::to_string(fit.token.token_bytes) + "-byte token seal needs " +
                              std::to_string(fit.seal.needed) + " and stamp " + std::to_string(fit.stamp.needed) +
                              " of its " + std::to_string(fit.seal.available) + " bytes of JSON";
        if (fit.max_servers) message += "; at most " + std::to_string(*fit.max_servers) + " such Tang servers fit";
        throw FormatError(message);
    }
}

// Template + source → the kickstart.
std::string render(std::string_view text, const std::string& source) {
    if (text.find(old_passphrase_marker) != std::string_view::npos)
        throw FormatError("the kickstart template has " + std::string(old_passphrase_marker) +
                          ": a passphrase rendered into a kickstart would be in every copy of it; let the kickstart's "
                          "%pre make one per install, as lorax-templates/kickstarts/ do");
    const std::size_t at = text.find(source_marker_line);
    if (at == std::string_view::npos || (at != 0 && text[at - 1] != '\n'))
        throw FormatError("the kickstart template has no line \"" + std::string(source_marker_line) + "\"");
    std::size_t after = at + source_marker_line.size();
    if (after < text.size() && text[after] == '\n') ++after;  // `source` ends with its own newline
    std::string out = std::string(text.substr(0, at)) + source + std::string(text.substr(after));
    if (out.find("@LUKSFORGE_") != std::string::npos)
        throw FormatError("the kickstart template holds an unknown @LUKSFORGE_...@ marker");
    return out;
}

// A new file (or, with --force, a replaced one), written whole or not at all: into a partial file private to
// this process, then published by link() (fails if `out` exists, atomically) or, with --force, rename().
void write_kickstart(const std::filesystem::path& out, const std::string& text, bool force) {
    const std::filesystem::path partial = out.string() + "." + std::to_string(::getpid()) + ".partial";
    const auto fail = [&](int code, const std::string& message) {
        std::error_code ignored;
        std::filesystem::remove(partial, ignored);
        throw Error(code, message);
    };
    {
        std::ofstream file(partial, std::ios::binary | std::ios::trunc);
        file << text;
        file.flush();
        if (!file) fail(EIO, "cannot write " + partial.string());
    }
    if (force) {
        if (::rename(partial.c_str(), out.c_str()) != 0)
            fail(errno, "cannot write " + out.string() + ": " + std::strerror(errno));
        return;
    }
    if (::link(partial.c_str(), out.c_str()) != 0) {
        const int code = errno;
        fail(code, code == EEXIST ? out.string() + " exists (--force replaces it)"
                                  : "cannot write " + out.string() + ": " + std::strerror(code));
    }
    std::error_code ignored;
    std::filesystem::remove(partial, ignored);
}

int run_kickstart(const KickstartOptions& options) {
    check_policy(options.policy);
    const std::string source = installation_source(options);
    const std::string kickstart = render(template_text(options), source);
    write_kickstart(options.out, kickstart, options.force);
    std::fprintf(stderr, "wrote %s (no secret in it: each install's %%pre makes its own build passphrase)\n",
                 options.out.c_str());
    return exit_ok;
}

}  // namespace

void register_kickstart_commands(CLI::App& app) {
    auto opts = std::make_shared<KickstartOptions>();
    auto* cmd = app.add_subcommand(
        "kickstart", "Render an NBDE kickstart (livemedia-creator --make-disk or virt-install) for a policy and an "
                     "installation source into a new file (no secret: each install makes its own build passphrase)");
    cmd->add_option("--kind", opts->kind, "lmc-make-disk (default) or virt-install")
        ->check(CLI::IsMember({"lmc-make-disk", "virt-install"}));
    cmd->add_option("--template", opts->template_file,
                    "Render this template instead (with the '# @LUKSFORGE_INSTALLATION_SOURCE@' line)");
    cmd->add_option("--policy", opts->policy,
                    "The deployment policy the installs bind (checked: valid, no TOFU, fits 16 KiB LUKS2 metadata)")
        ->required();
    cmd->add_option("--url", opts->url, "Installation source: the kickstart's url --url=URL");
    cmd->add_option("--repo", opts->repos, "Additional repository NAME=URL (repeatable; with --url)");
    cmd->add_option("--include", opts->include,
                    "Installation source in a file the kickstart %includes (a path as the installer sees it)");
    cmd->add_option("--out", opts->out, "The kickstart to write")->required();
    cmd->add_flag("--force", opts->force, "Replace an existing --out file");
    set_action(*cmd, [opts] { return run_kickstart(*opts); });
}

}  // namespace luksforge::cli
