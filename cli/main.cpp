// The `luksforge` command: parses with CLI11, runs the chosen subcommand's action and maps luksforge
// exceptions to the documented exit codes (docs/cli.md).
#include "commands.hpp"
#include "common.hpp"

#include <luksforge/error.hpp>

#include <sys/prctl.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

namespace {

void print_error(const std::string& message) {
    std::string line = message;
    // One line, always: the library's messages may carry libcryptsetup's embedded newlines.
    for (char& c : line)
        if (c == '\n' || c == '\r') c = ' ';
    std::fprintf(stderr, "luksforge: error: %s\n", line.c_str());
}

}  // namespace

int main(int argc, char** argv) {
    // Almost every subcommand holds a passphrase or volume key at some point: no core dump may ever carry one
    // (a SIGKILL never dumps, but SIGSEGV/SIGABRT would), and no other user may read this process's memory.
    const rlimit no_core{0, 0};
    ::setrlimit(RLIMIT_CORE, &no_core);
    ::prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
    // tpm2-tss logs every failed TPM command to stderr (a changed PCR, no TPM) before luksforge says what it
    // means in its one error line; TSS2_LOG set by the user still wins. Set before any thread starts.
    ::setenv("TSS2_LOG", "all+NONE", 0);
    using namespace luksforge::cli;
    CLI::App app{"luksforge: NBDE-ready LUKS2 images with unique volume keys and Clevis bindings", "luksforge"};
    app.set_version_flag("--version", std::string("luksforge ") + LUKSFORGE_VERSION);
    app.require_subcommand(1);
    app.fallthrough(false);

    register_luks_commands(app);
    register_clevis_commands(app);
    register_image_commands(app);
    register_policy_commands(app);
    register_kickstart_commands(app);

    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        if (e.get_exit_code() == 0) return app.exit(e);
        print_error(e.what());
        std::fprintf(stderr, "Run with --help for more information.\n");
        return exit_usage;
    } catch (const std::exception& e) {
        print_error(e.what());
        return exit_usage;
    }

    try {
        auto action = chosen_action(app);
        if (!action) {
            print_error("no command given");
            return exit_usage;
        }
        return action();
    } catch (const luksforge::AuthError& e) {
        print_error(e.what());
        return exit_auth;
    } catch (const luksforge::NotFoundError& e) {
        print_error(e.what());
        return exit_not_found;
    } catch (const luksforge::BusyError& e) {
        print_error(e.what());
        return exit_busy;
    } catch (const luksforge::TangError& e) {
        print_error(e.what());
        return exit_tang;
    } catch (const luksforge::FormatError& e) {
        print_error(e.what());
        return exit_format;
    } catch (const CLI::ParseError& e) {
        print_error(e.what());
        return exit_usage;
    } catch (const std::exception& e) {
        print_error(e.what());
        return exit_error;
    }
}
