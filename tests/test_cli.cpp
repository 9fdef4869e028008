// The `luksforge` CLI contract (issue 2): format/inspect/rekey/add-key/remove-key/token, --json output,
// exit codes, secrets only from files/fds/stdin, --help everywhere.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "testutil.hpp"

#include <luksforge/luks.hpp>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include <memory>
#include <string>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kPass = "cli passphrase";

struct Json {
    json_t* root = nullptr;
    explicit Json(const std::string& text) {
        json_error_t error;
        root = json_loads(text.c_str(), 0, &error);
        REQUIRE_MESSAGE(root != nullptr, "not JSON: " << text);
    }
    ~Json() { json_decref(root); }
    json_t* operator[](const char* key) const { return json_object_get(root, key); }
    std::string str(const char* key) const {
        const json_t* v = json_object_get(root, key);
        return json_is_string(v) ? json_string_value(v) : "";
    }
};

std::vector<std::string> fast_pbkdf() { return {"--pbkdf", "pbkdf2", "--pbkdf-iterations", "1000"}; }

RunResult format(const std::filesystem::path& image, const std::filesystem::path& pass_file,
                 std::vector<std::string> extra = {}) {
    std::vector<std::string> args{"format", image.string(), "--passphrase-file", pass_file.string()};
    for (auto& a : fast_pbkdf()) args.push_back(a);
    for (auto& a : extra) args.push_back(a);
    return run_cli(args);
}

void check_one_line_error(const RunResult& r, const std::string& fragment) {
    CHECK(r.err.rfind("luksforge: error: ", 0) == 0);
    CHECK(std::count(r.err.begin(), r.err.end(), '\n') == 1);
    CHECK_MESSAGE(r.err.find(fragment) != std::string::npos, r.err);
}

}  // namespace

TEST_CASE("format --size creates the file; inspect --json has the contract fields") {
    TempDir dir;
    const auto image = dir / "new.img";
    write_file(dir / "pass", kPass);
    RunResult r = format(image, dir / "pass", {"--size", "48M", "--label", "cli"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(std::filesystem::file_size(image) == 48 * kMiB);
    CHECK(r.out.find(kPass) == std::string::npos);

    r = run_cli({"inspect", image.string(), "--json"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    Json json(r.out);
    CHECK(json.str("uuid").size() == 36);
    CHECK(json.str("cipher") == "aes-xts-plain64");
    CHECK(json_integer_value(json["sector_size"]) == 4096);
    CHECK(json.str("label") == "cli");
    CHECK(json.str("fingerprint").size() == 64);
    REQUIRE(json_array_size(json["keyslots"]) == 1);
    json_t* slot = json_array_get(json["keyslots"], 0);
    CHECK(json_integer_value(json_object_get(slot, "id")) == 0);
    CHECK(std::string(json_string_value(json_object_get(json_object_get(slot, "pbkdf"), "type"))) == "pbkdf2");
    CHECK(json_integer_value(json_object_get(json_object_get(slot, "pbkdf"), "iterations")) == 1000);
    CHECK(json_is_array(json["tokens"]));
    CHECK(Volume::open(image).fingerprint() == json.str("fingerprint"));

    // --size extends an existing smaller file and never shrinks.
    const auto grown = dir / "grow.img";
    make_sparse_file(grown, 20 * kMiB);
    REQUIRE(format(grown, dir / "pass", {"--size", "40M"}).exit_code == 0);
    CHECK(std::filesystem::file_size(grown) == 40 * kMiB);
    r = run_cli({"inspect", image.string()});
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("Fingerprint:") != std::string::npos);
}

TEST_CASE("format: passphrase from stdin or fd, argon2id options, --json") {
    TempDir dir;
    const auto image = dir / "a.img";
    make_sparse_file(image, 32 * kMiB);
    RunResult r = run_cli({"format", image.string(), "--passphrase-file", "-", "--pbkdf", "argon2id",
                           "--pbkdf-iterations", "4", "--pbkdf-memory", "32768", "--pbkdf-parallel", "1", "--json"},
                          kPass);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    Json json(r.out);
    json_t* pbkdf = json_object_get(json_array_get(json["keyslots"], 0), "pbkdf");
    CHECK(std::string(json_string_value(json_object_get(pbkdf, "type"))) == "argon2id");
    CHECK(json_integer_value(json_object_get(pbkdf, "memory")) == 32768);
    CHECK(Volume::open(image).test_passphrase(kPass) == 0);

    const auto image2 = dir / "b.img";
    make_sparse_file(image2, 32 * kMiB);
    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    REQUIRE(::write(fds[1], kPass.data(), kPass.size()) == static_cast<ssize_t>(kPass.size()));
    ::close(fds[1]);
    std::vector<std::string> args{"format", image2.string(), "--passphrase-fd", std::to_string(fds[0])};
    for (auto& a : fast_pbkdf()) args.push_back(a);
    r = run_cli(args, {}, {fds[0]});
    ::close(fds[0]);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(Volume::open(image2).test_passphrase(kPass) == 0);
}

TEST_CASE("secrets never come from argv") {
    TempDir dir;
    const auto image = dir / "a.img";
    make_sparse_file(image, 32 * kMiB);
    // There is no option taking a passphrase value; such attempts are usage errors.
    CHECK(run_cli({"format", image.string(), "--passphrase", kPass}).exit_code == 2);
    CHECK(run_cli({"format", image.string(), "--key", kPass}).exit_code == 2);
    // A missing secret source is a usage error, not a prompt or an empty passphrase.
    CHECK(run_cli({"format", image.string()}).exit_code == 2);
    // Nothing was written.
    CHECK(read_file_bytes(image, 0, 4096) == std::string(4096, '\0'));
    // --help of every secret-taking command mentions only file/fd sources.
    for (const char* cmd : {"format", "add-key", "rekey", "remove-key"}) {
        const RunResult help = run_cli({cmd, "--help"});
        CHECK(help.out.find("--passphrase-file") != std::string::npos);
        CHECK(help.out.find("--passphrase ") == std::string::npos);
    }
}

TEST_CASE("add-key, remove-key, token list/export/import/remove") {
    TempDir dir;
    const auto image = dir / "a.img";
    write_file(dir / "pass", kPass);
    write_file(dir / "new", "another one");
    REQUIRE(format(image, dir / "pass", {"--size", "32M"}).exit_code == 0);
    RunResult r = run_cli({"add-key", image.string(), "--passphrase-file", dir / "pass", "--new-passphrase-file",
                           dir / "new", "--pbkdf", "pbkdf2", "--pbkdf-iterations", "1000", "--key-slot", "4", "--json"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(json_integer_value(Json(r.out)["keyslot"]) == 4);
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-slot", "4", "--key-file", (dir / "new").string(),
               image.string()})
              .exit_code == 0);
    // Both secrets from stdin is refused.
    CHECK(run_cli({"add-key", image.string(), "--passphrase-file", "-", "--new-passphrase-file", "-"}, "x").exit_code == 2);

    write_file(dir / "token.json", R"({"type":"clevis","keyslots":["4"],"jwe":{"ciphertext":""}})");
    r = run_cli({"token", "import", image.string(), "--json-file", (dir / "token.json").string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    r = run_cli({"token", "import", image.string(), "--token-id", "3"}, R"({"type":"other","keyslots":[]})");
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    r = run_cli({"token", "list", image.string(), "--json"});
    REQUIRE(r.exit_code == 0);
    Json list(r.out);
    CHECK(json_array_size(list.root) == 2);
    r = run_cli({"token", "export", image.string(), "--token-id", "0"});
    REQUIRE(r.exit_code == 0);
    Json exported(r.out);
    CHECK(exported.str("type") == "clevis");
    CHECK(run_cli({"token", "remove", image.string(), "--token-id", "3"}).exit_code == 0);
    CHECK(run_cli({"token", "export", image.string(), "--token-id", "3"}).exit_code == 4);
    CHECK(run_cli({"token", "import", image.string()}, "{broken").exit_code == 7);

    // remove-key by passphrase, and the last keyslot needs --force.
    r = run_cli({"remove-key", image.string(), "--passphrase-file", dir / "new"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.out.find("Removed keyslot 4") != std::string::npos);
    r = run_cli({"remove-key", image.string(), "--key-slot", "0"});
    CHECK(r.exit_code == 7);
    check_one_line_error(r, "last one");
    CHECK(run_cli({"remove-key", image.string(), "--key-slot", "9"}).exit_code == 4);
}

TEST_CASE("rekey through the CLI: new fingerprint, passphrase still opens, --json") {
    TempDir dir;
    const auto image = dir / "a.img";
    write_file(dir / "pass", kPass);
    REQUIRE(format(image, dir / "pass", {"--size", "40M"}).exit_code == 0);
    const std::string before = Json(run_cli({"inspect", image.string(), "--json"}).out).str("fingerprint");
    RunResult r = run_cli({"rekey", image.string(), "--passphrase-file", (dir / "pass").string()});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.err.empty());  // no progress bar when stderr is not a terminal
    const std::string after = Json(run_cli({"inspect", image.string(), "--json"}).out).str("fingerprint");
    CHECK(after != before);
    CHECK(r.out.find(after) != std::string::npos);
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-file", (dir / "pass").string(), image.string()}).exit_code == 0);

    r = run_cli({"rekey", image.string(), "--passphrase-file", "-", "--json"}, kPass);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    Json json(r.out);
    CHECK(json.str("old_fingerprint") == after);
    CHECK(json.str("new_fingerprint") != after);
    CHECK(json_array_size(json["keyslots"]) == 1);

    write_file(dir / "wrong", "wrong");
    const std::string header = read_file_bytes(image, 0, 16 * kMiB);
    r = run_cli({"rekey", image.string(), "--passphrase-file", (dir / "wrong").string()});
    CHECK(r.exit_code == 3);
    check_one_line_error(r, "opens no keyslot");
    CHECK(read_file_bytes(image, 0, 16 * kMiB) == header);
}

TEST_CASE("exit codes and one-line errors; bad input changes nothing") {
    TempDir dir;
    write_file(dir / "pass", kPass);
    write_file(dir / "wrong", "nope");
    const auto image = dir / "a.img";
    REQUIRE(format(image, dir / "pass", {"--size", "32M"}).exit_code == 0);
    const std::string header = read_file_bytes(image, 0, 16 * kMiB);

    RunResult r = run_cli({"inspect", (dir / "missing.img").string()});
    CHECK(r.exit_code == 4);
    check_one_line_error(r, "missing.img");

    write_file(dir / "plain.img", std::string(2 * kMiB, 'z'));
    r = run_cli({"inspect", (dir / "plain.img").string()});
    CHECK(r.exit_code == 7);
    check_one_line_error(r, "is not a LUKS volume");

    run_ok({"cryptsetup", "luksFormat", "--batch-mode", "--type", "luks1", "--pbkdf-force-iterations", "1000",
            "--key-file", (dir / "pass").string(), (dir / "plain.img").string()});
    const std::string luks1 = read_file_bytes(dir / "plain.img");
    r = run_cli({"rekey", (dir / "plain.img").string(), "--passphrase-file", (dir / "pass").string()});
    CHECK(r.exit_code == 7);
    check_one_line_error(r, "is LUKS1; luksforge needs LUKS2");
    CHECK(read_file_bytes(dir / "plain.img") == luks1);

    r = run_cli({"add-key", image.string(), "--passphrase-file", (dir / "wrong").string(), "--new-passphrase-file",
                 (dir / "pass").string()});
    CHECK(r.exit_code == 3);
    check_one_line_error(r, "passphrase");

    write_file(dir / "tiny.img", std::string(kMiB, 't'));
    r = format(dir / "tiny.img", dir / "pass");
    CHECK(r.exit_code == 7);
    check_one_line_error(r, "too small");
    CHECK(read_file_bytes(dir / "tiny.img") == std::string(kMiB, 't'));

    {
        // Another process (this test) holds the luksforge lock.
        DeviceLock lock = DeviceLock::acquire(image);
        r = run_cli({"add-key", image.string(), "--passphrase-file", (dir / "pass").string(), "--new-passphrase-file",
                     (dir / "wrong").string()});
        CHECK(r.exit_code == 5);
        check_one_line_error(r, "is locked by another luksforge process");
        r = format(image, dir / "pass", {"--force"});
        CHECK(r.exit_code == 5);
    }
    CHECK(read_file_bytes(image, 0, 16 * kMiB) == header);

    // format never destroys recognisable data unless told to: a LUKS volume, a filesystem, a partition table.
    r = format(image, dir / "pass");
    CHECK(r.exit_code == 7);
    check_one_line_error(r, "already holds crypto_LUKS");
    CHECK(read_file_bytes(image, 0, 16 * kMiB) == header);
    make_sparse_file(dir / "fs.img", 32 * kMiB);
    run_ok({"mkfs.ext4", "-q", "-F", (dir / "fs.img").string()});
    make_sparse_file(dir / "disk.img", 32 * kMiB);
    run_ok({"sfdisk", "--quiet", (dir / "disk.img").string()}, "label: gpt\n");
    for (const auto& [name, what] : {std::pair{"fs.img", "ext4"}, std::pair{"disk.img", "gpt partition table"}}) {
        const std::string before = read_file_bytes(dir / name);
        r = format(dir / name, dir / "pass");
        CHECK(r.exit_code == 7);
        check_one_line_error(r, std::string("already holds ") + what);
        CHECK(read_file_bytes(dir / name) == before);
    }
    REQUIRE(format(dir / "fs.img", dir / "pass", {"--force"}).exit_code == 0);
    CHECK(run_cli({"inspect", (dir / "fs.img").string()}).exit_code == 0);

    CHECK(run_cli({"format", image.string(), "--passphrase-file", (dir / "pass").string(), "--size", "12Q"}).exit_code == 2);
    CHECK(run_cli({"no-such-command"}).exit_code == 2);
    CHECK(run_cli({}).exit_code == 2);
    CHECK(read_file_bytes(image, 0, 16 * kMiB) == header);
}

TEST_CASE("--help on every subcommand, --version") {
    RunResult r = run_cli({"--version"});
    CHECK(r.exit_code == 0);
    CHECK(r.out.find("luksforge ") == 0);
    for (std::vector<std::string> cmd : std::vector<std::vector<std::string>>{
             {"--help"}, {"format", "--help"}, {"inspect", "--help"}, {"add-key", "--help"}, {"remove-key", "--help"},
             {"rekey", "--help"}, {"token", "--help"}, {"token", "list", "--help"}, {"token", "export", "--help"},
             {"token", "import", "--help"}, {"token", "remove", "--help"}}) {
        CAPTURE(cmd[0]);
        r = run_cli(cmd);
        CHECK(r.exit_code == 0);
        CHECK(r.out.find("Usage:") != std::string::npos);
    }
}

TEST_CASE("rekey draws a progress bar when stderr is a terminal") {
    if (!have_program("script")) {
        MESSAGE("util-linux script(1) not available; skipping the terminal case");
        return;
    }
    TempDir dir;
    const auto image = dir / "a.img";
    write_file(dir / "pass", kPass);
    REQUIRE(format(image, dir / "pass", {"--size", "40M"}).exit_code == 0);
    // script(1) runs the command on a pseudo-terminal; its output is what the terminal showed.
    const std::string command = std::string(LUKSFORGE_CLI) + " rekey " + image.string() + " --passphrase-file " +
                                (dir / "pass").string();
    const RunResult r = run({"script", "--quiet", "--return", "--command", command, "/dev/null"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.out << r.err);
    CHECK(r.out.find("Re-encrypting [") != std::string::npos);
    CHECK(r.out.find("100.0%") != std::string::npos);
}

TEST_CASE("SIGTERM pauses rekey cleanly; running rekey again finishes it") {
    TempDir dir;
    const auto image = dir / "a.img";
    write_file(dir / "pass", kPass);
    REQUIRE(format(image, dir / "pass", {"--size", "272M"}).exit_code == 0);
    const std::string before = Volume::open(image, Volume::Access::read_only).fingerprint();

    int err_pipe[2];
    REQUIRE(::pipe(err_pipe) == 0);
    const pid_t child = ::fork();
    REQUIRE(child >= 0);
    if (child == 0) {
        ::dup2(err_pipe[1], 2);
        ::close(err_pipe[0]);
        const int null = ::open("/dev/null", O_WRONLY);
        ::dup2(null, 1);
        const std::string img = image.string(), pass = (dir / "pass").string();
        ::execl(LUKSFORGE_CLI, LUKSFORGE_CLI, "rekey", img.c_str(), "--passphrase-file", pass.c_str(),
                "--hotzone-size", "512K", static_cast<char*>(nullptr));
        ::_exit(127);
    }
    ::close(err_pipe[1]);
    // Wait until the header says re-encryption is in progress (the signal guard is in place by then).
    bool started = false;
    for (int i = 0; i < 400 && !started; ++i) {
        started = read_file_bytes(image, 4096, 12288).find("online-reencrypt") != std::string::npos;
        if (!started) ::usleep(10000);
    }
    ::kill(child, SIGTERM);
    int status = 0;
    REQUIRE(::waitpid(child, &status, 0) == child);
    std::string err;
    char buffer[4096];
    for (ssize_t n; (n = ::read(err_pipe[0], buffer, sizeof buffer)) > 0;) err.append(buffer, static_cast<std::size_t>(n));
    ::close(err_pipe[0]);
    REQUIRE(started);
    REQUIRE(WIFEXITED(status));
    if (WEXITSTATUS(status) == 0) {
        MESSAGE("re-encryption finished before the signal arrived; pause not exercised");
    } else {
        CHECK(WEXITSTATUS(status) == 1);
        CHECK(err.find("interrupted; run luksforge rekey again to resume") != std::string::npos);
        CHECK(Volume::open(image, Volume::Access::read_only).inspect().reencryption_in_progress);
        const RunResult r = run_cli({"rekey", image.string(), "--passphrase-file", (dir / "pass").string()});
        REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    }
    Volume volume = Volume::open(image, Volume::Access::read_only);
    CHECK_FALSE(volume.inspect().reencryption_in_progress);
    CHECK(volume.fingerprint() != before);
    CHECK(volume.test_passphrase(kPass).has_value());
}

namespace {

// The loader's own account of the files it opens (LD_DEBUG=files), on stderr with the command's own.
RunResult run_cli_traced(const std::vector<std::string>& args) {
    std::vector<std::string> argv{"env", "LD_DEBUG=files", LUKSFORGE_CLI};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv);
}

bool loaded(const RunResult& r, const std::string& soname) {
    return r.err.find("file=" + soname + " ") != std::string::npos ||
           r.err.find("file=" + soname + ";") != std::string::npos ||
           r.err.find("file=" + soname + " [") != std::string::npos;
}

// Run the CLI with `library` (a soname, as the loader finds it) replaced by an empty file, in a private mount
// namespace: as on a system where that package is not installed.
RunResult run_cli_without(const std::string& library, const std::vector<std::string>& args) {
    const std::string where = run_ok({"sh", "-c", "ldconfig -p | awk '$1 == \"" + library + "\" { print $NF; exit }'"});
    REQUIRE_MESSAGE(!where.empty(), library << " is not in the loader's cache");
    std::vector<std::string> argv{"unshare", "-m", "sh", "-c",
                                  "mount --bind /dev/null \"$0\" && exec \"$@\"",
                                  where.substr(0, where.find('\n')), LUKSFORGE_CLI};
    argv.insert(argv.end(), args.begin(), args.end());
    return run(argv);
}

}  // namespace

// libcurl, libpq and tpm2-tss are loaded when a command first needs them (lib/src/util/dynamic_library.hpp),
// not by every command: they bring ~35 shared libraries that cost ~5 ms at each start.
TEST_CASE("libcurl, libpq and tpm2-tss load only for the commands that use them") {
    TempDir dir;
    write_file(dir / "pass", kPass);
    REQUIRE(format(dir / "disk.img", dir / "pass", {"--size", std::to_string(32 * kMiB)}).exit_code == 0);

    SUBCASE("inspect and format load none of them") {
        for (const RunResult& r : {run_cli_traced({"inspect", (dir / "disk.img").string()}),
                                   run_cli_traced({"format", (dir / "other.img").string(), "--size",
                                                   std::to_string(32 * kMiB), "--passphrase-file",
                                                   (dir / "pass").string(), "--pbkdf", "pbkdf2",
                                                   "--pbkdf-iterations", "1000"})}) {
            CHECK_MESSAGE(r.exit_code == 0, r.err.substr(r.err.size() > 2000 ? r.err.size() - 2000 : 0));
            REQUIRE(loaded(r, "libcryptsetup.so.12"));  // the trace works: the library luksforge links is in it
            CHECK_FALSE(loaded(r, "libcurl.so.4"));
            CHECK_FALSE(loaded(r, "libpq.so.5"));
            CHECK_FALSE(loaded(r, "libtss2-esys.so.0"));
        }
    }
    SUBCASE("a tang bind loads libcurl (and only it)") {
        // Nothing listens on port 1: the bind fails, after libcurl was loaded to ask.
        const RunResult r = run_cli_traced({"bind", (dir / "disk.img").string(), "tang",
                                            R"({"url":"http://127.0.0.1:1"})", "--passphrase-file",
                                            (dir / "pass").string()});
        CHECK(r.exit_code != 0);
        CHECK(loaded(r, "libcurl.so.4"));
        CHECK_FALSE(loaded(r, "libpq.so.5"));
        CHECK_FALSE(loaded(r, "libtss2-esys.so.0"));
    }
    SUBCASE("without libcurl: a one-line error that names it, and the image is untouched") {
        const std::string before = sha256_file(dir / "disk.img");
        const RunResult r = run_cli_without("libcurl.so.4", {"bind", (dir / "disk.img").string(), "tang",
                                                             R"({"url":"http://127.0.0.1:1"})", "--passphrase-file",
                                                             (dir / "pass").string()});
        CHECK(r.exit_code == 1);
        check_one_line_error(r, "talking to a Tang server (HTTP) needs libcurl.so.4, which cannot be loaded");
        CHECK(sha256_file(dir / "disk.img") == before);
        // Commands that never reach a server still work without it.
        CHECK(run_cli_without("libcurl.so.4", {"inspect", (dir / "disk.img").string()}).exit_code == 0);
    }
    SUBCASE("without libpq: a PostgreSQL ledger says what is missing") {
        const RunResult r = run_cli_without("libpq.so.5", {"audit", "--ledger", "postgresql://127.0.0.1:1/none"});
        CHECK(r.exit_code != 0);
        check_one_line_error(r, "a PostgreSQL ledger needs libpq.so.5, which cannot be loaded");
    }
}
