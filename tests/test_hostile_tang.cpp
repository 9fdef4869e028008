// Hostile Tang servers (tests/support/hostile_tang.py on 127.0.0.1), hostile tokens imported with stock
// `cryptsetup token import` and hostile policy files: each is refused with a clear error, in bounded time and
// memory, and never crashes luksforge. The bounds (30 s, 200 MiB) are safety limits, not benchmarks.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "tang_server.hpp"
#include "testutil.hpp"

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <netinet/in.h>
#include <unistd.h>

#include <jansson.h>

#include <chrono>
#include <fstream>
#include <functional>
#include <string>
#include <thread>

using namespace luksforge::test;
namespace fs = std::filesystem;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
constexpr double max_seconds = 30;
constexpr long max_rss_kib = 200 * 1024;

struct Measured {
    int exit_code = -1;       // 128 + signal when killed
    std::string err;
    double seconds = 0;
    long max_rss_kib = 0;
};

// Run the CLI with its own rusage (wait4): exit code, stderr, wall time and peak RSS of that one process.
Measured run_measured(const std::vector<std::string>& args) {
    TempDir dir;
    const fs::path err_file = dir / "stderr";
    std::vector<std::string> argv = {LUKSFORGE_CLI};
    argv.insert(argv.end(), args.begin(), args.end());
    const auto start = std::chrono::steady_clock::now();
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int null = ::open("/dev/null", O_RDWR);
        const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(err, 2);
        std::vector<char*> cargs;
        for (auto& a : argv) cargs.push_back(a.data());
        cargs.push_back(nullptr);
        ::execv(cargs[0], cargs.data());
        ::_exit(127);
    }
    // A hang is a failure too: kill it well after the bound so the test reports instead of blocking.
    int status = 0;
    rusage usage{};
    for (;;) {
        const pid_t done = ::wait4(pid, &status, WNOHANG, &usage);
        if (done == pid) break;
        if (std::chrono::steady_clock::now() - start > std::chrono::seconds(120)) ::kill(pid, SIGKILL);
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    Measured m;
    m.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    m.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    m.max_rss_kib = usage.ru_maxrss;
    m.err = read_file_bytes(err_file);
    return m;
}

// Refused: a non-zero exit that is not a crash, a message containing `fragment`, within the bounds.
void check_refused(const Measured& m, const std::string& fragment) {
    INFO("stderr: " << m.err);
    CHECK(m.exit_code != 0);
    CHECK(m.exit_code < 128);
    CHECK(m.err.find(fragment) != std::string::npos);
    CHECK(m.seconds < max_seconds);
    CHECK(m.max_rss_kib < max_rss_kib);
}

// Ended by itself (any exit status but a signal) within the bounds.
void check_no_crash(const Measured& m) {
    INFO("stderr: " << m.err);
    CHECK(m.exit_code < 128);
    CHECK(m.seconds < max_seconds);
    CHECK(m.max_rss_kib < max_rss_kib);
}

bool accepts(int port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool ok = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0;
    ::close(fd);
    return ok;
}

class HostileTang {
public:
    explicit HostileTang(const std::string& mode, const std::vector<std::string>& extra = {}) {
        port_ = free_loopback_port();
        std::vector<std::string> argv = {"/usr/bin/python3", LUKSFORGE_SOURCE_DIR "/tests/support/hostile_tang.py",
                                         "--port", std::to_string(port_), "--mode", mode};
        argv.insert(argv.end(), extra.begin(), extra.end());
        pid_ = ::fork();
        REQUIRE(pid_ >= 0);
        if (pid_ == 0) {
            ::setpgid(0, 0);
            const int null = ::open("/dev/null", O_RDWR);
            ::dup2(null, 0);
            ::dup2(null, 1);
            std::vector<char*> cargs;
            for (auto& a : argv) cargs.push_back(a.data());
            cargs.push_back(nullptr);
            ::execv(cargs[0], cargs.data());
            ::_exit(127);
        }
        ::setpgid(pid_, pid_);
        for (int i = 0; i < 500 && !accepts(port_); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        REQUIRE_MESSAGE(accepts(port_), "hostile server did not start");
    }
    ~HostileTang() { stop_process(pid_); }
    HostileTang(const HostileTang&) = delete;
    HostileTang& operator=(const HostileTang&) = delete;
    std::string url() const { return "http://127.0.0.1:" + std::to_string(port_); }

private:
    int port_ = 0;
    pid_t pid_ = -1;
};

std::string trim(std::string s) {
    while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
    return s;
}

// The key files of a tangd key directory by use: "verify" (signing) or "deriveKey" (exchange).
fs::path key_file(const TangServer& tang, const std::string& use) {
    for (const auto& entry : fs::directory_iterator(tang.key_dir()))
        if (entry.path().extension() == ".jwk" &&
            run({"jose", "jwk", "use", "-i", entry.path().string(), "-u", use}).exit_code == 0)
            return entry.path();
    FAIL("no " << use << " key");
    return {};
}

// An advertisement signed by `tang`'s real signing key whose exchange key is altered by `mutate` (applied to
// the public exchange JWK): the signature verifies, so only the key checks can refuse it.
fs::path signed_adv_with_exchange_key(const TangServer& tang, const fs::path& dir, const std::string& name,
                                      const std::function<void(json_t*)>& mutate) {
    const std::string sig_pub = run_ok({"jose", "jwk", "pub", "-i", key_file(tang, "verify").string()});
    const std::string exc_pub = run_ok({"jose", "jwk", "pub", "-i", key_file(tang, "deriveKey").string()});
    json_error_t error;
    json_t* exc = json_loads(exc_pub.c_str(), 0, &error);
    REQUIRE(exc != nullptr);
    mutate(exc);
    char* exc_text = json_dumps(exc, JSON_COMPACT);
    json_decref(exc);
    write_file(dir / (name + ".keys"), "{\"keys\":[" + trim(sig_pub) + "," + exc_text + "]}");
    std::free(exc_text);
    const fs::path adv = dir / (name + ".jws");
    run_ok({"jose", "jws", "sig", "-I", (dir / (name + ".keys")).string(), "-k", key_file(tang, "verify").string(),
            "-o", adv.string()});
    return adv;
}

std::string pinned(const std::string& url, const std::string& thp) {
    return R"({"url":")" + url + R"(","thp":")" + thp + R"("})";
}

struct Image {
    TempDir dir;
    fs::path path = dir / "disk.img";
    fs::path pass = dir / "pass";
    Image() {
        write_file(pass, "hostile passphrase");
        make_sparse_file(path, 32 * kMiB);
        run_ok({LUKSFORGE_CLI, "format", path.string(), "--passphrase-file", pass.string(), "--pbkdf", "pbkdf2",
                "--pbkdf-iterations", "1000"});
    }
    Measured bind(const std::string& config, const std::vector<std::string>& extra = {}) const {
        std::vector<std::string> args = {"bind", path.string(), "tang", config, "--passphrase-file", pass.string()};
        args.insert(args.end(), extra.begin(), extra.end());
        return run_measured(args);
    }
};

}  // namespace

TEST_CASE("hostile /adv: huge, endless and drip-fed bodies, redirects, wrong content types") {
    TangServer tang;
    TempDir dir;
    const fs::path adv = dir / "adv.jws";
    write_file(adv, tang.advertisement());
    Image image;
    const std::string thp = tang.thumbprint();
    {
        HostileTang server("huge-adv");
        check_refused(image.bind(pinned(server.url(), thp)), "larger than");
    }
    {
        HostileTang server("endless-adv");
        check_refused(image.bind(pinned(server.url(), thp)), "larger than");
    }
    {
        HostileTang server("drip-adv");
        check_refused(image.bind(pinned(server.url(), thp)), "timed out");
    }
    {
        HostileTang server("redirect");
        const Measured m = image.bind(pinned(server.url(), thp));
        check_refused(m, "redirected");
        CHECK(m.err.find("not followed") != std::string::npos);
    }
    {
        HostileTang server("wrong-type", {"--adv", adv.string()});
        check_refused(image.bind(pinned(server.url(), thp)), "Content-Type 'text/html");
    }
    // Nothing was bound by any of them.
    CHECK(run_cli({"list", image.path.string()}).out.empty());
}

// bind fetches the advertisement on a second thread while it derives the volume key (pin_round_trips.hpp). A
// wrong build passphrase must still be the answer, at once: the transfer still drip-feeding is cancelled, not
// waited out to its timeout, and nothing is written.
TEST_CASE("a wrong build passphrase while the advertisement drip-feeds: exit 3 at once, the fetch cancelled") {
    TangServer tang;
    Image image;
    const fs::path wrong = image.dir / "wrong";
    write_file(wrong, "not the build passphrase");
    HostileTang server("drip-adv");
    const std::string config = pinned(server.url(), tang.thumbprint());
    const Measured m = run_measured({"bind", image.path.string(), "tang", config, "--passphrase-file", wrong.string(),
                                     "--timeout", "20000"});
    CHECK(m.exit_code == 3);
    CHECK_MESSAGE(m.err.find("opens no keyslot") != std::string::npos, m.err);
    CHECK_MESSAGE(m.seconds < 5, m.seconds);  // the drip-fed transfer alone would run to the 20 s timeout
    CHECK(run_cli({"list", image.path.string()}).out.empty());
}

TEST_CASE("hostile advertisements: invalid curves, points not on the curve, a signer other than the pinned key") {
    TangServer tang, other;
    TempDir dir;
    Image image;
    const std::string thp = tang.thumbprint();
    auto refused_adv = [&](const fs::path& adv_file, const std::string& fragment) {
        HostileTang server("adv-file", {"--adv", adv_file.string()});
        check_refused(image.bind(pinned(server.url(), thp)), fragment);
        // The same advertisement given offline is refused the same way.
        check_refused(image.bind(R"({"url":")" + server.url() + R"(","adv":")" + adv_file.string() + R"("})"),
                      fragment);
    };
    refused_adv(signed_adv_with_exchange_key(tang, dir.path(), "secp256k1",
                                             [](json_t* k) { json_object_set_new(k, "crv", json_string("secp256k1")); }),
                "secp256k1");
    refused_adv(signed_adv_with_exchange_key(tang, dir.path(), "p192",
                                             [](json_t* k) { json_object_set_new(k, "crv", json_string("P-192")); }),
                "P-192");
    refused_adv(signed_adv_with_exchange_key(tang, dir.path(), "off-curve",
                                             [](json_t* k) {
                                                 std::string x = json_string_value(json_object_get(k, "x"));
                                                 x[10] = x[10] == 'A' ? 'B' : 'A';
                                                 json_object_set_new(k, "x", json_string(x.c_str()));
                                             }),
                "not on P-521");
    refused_adv(signed_adv_with_exchange_key(tang, dir.path(), "rsa",
                                             [](json_t* k) {
                                                 json_object_set_new(k, "kty", json_string("RSA"));
                                                 json_object_set_new(k, "n", json_string("AQAB"));
                                                 json_object_set_new(k, "e", json_string("AQAB"));
                                             }),
                "exchange");
    {
        // Mismatched keys: the server behind the URL is another Tang; the pinned key did not sign its answer.
        HostileTang server("adv-file", {"--adv", (dir / "other.jws").string()});
        write_file(dir / "other.jws", other.advertisement());
        check_refused(image.bind(pinned(server.url(), thp)), "thumbprint mismatch");
    }
    CHECK(run_cli({"list", image.path.string()}).out.empty());
}

TEST_CASE("hostile /rec replies: huge, off the curve, wrong curve, from other keys; the honest proxy unlocks") {
    TangServer tang, other;
    TempDir dir;
    write_file(dir / "adv.jws", tang.advertisement());
    const int port = free_loopback_port();
    const std::string url = "http://127.0.0.1:" + std::to_string(port);
    Image image;
    // Bound offline to tang's advertisement, but the URL the token names is the hostile server's.
    const Measured bound = image.bind(R"({"url":")" + url + R"(","adv":")" + (dir / "adv.jws").string() + R"("})",
                                      {"--no-verify"});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    auto unlock_with = [&](const std::string& mode, const std::vector<std::string>& extra) {
        // The hostile server must take the port the token names.
        std::vector<std::string> argv = {"/usr/bin/python3", LUKSFORGE_SOURCE_DIR "/tests/support/hostile_tang.py",
                                         "--port", std::to_string(port), "--mode", mode};
        argv.insert(argv.end(), extra.begin(), extra.end());
        pid_t pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::setpgid(0, 0);
            const int null = ::open("/dev/null", O_RDWR);
            ::dup2(null, 0);
            ::dup2(null, 1);
            std::vector<char*> cargs;
            for (auto& a : argv) cargs.push_back(a.data());
            cargs.push_back(nullptr);
            ::execv(cargs[0], cargs.data());
            ::_exit(127);
        }
        ::setpgid(pid, pid);
        for (int i = 0; i < 500 && !accepts(port); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        Measured m = run_measured({"unlock", image.path.string(), "--test"});
        stop_process(pid);
        for (int i = 0; i < 100 && accepts(port); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
        return m;
    };
    const std::string upstream_tang = "127.0.0.1:" + std::to_string(tang.port());
    const std::string upstream_other = "127.0.0.1:" + std::to_string(other.port());
    // The harness itself: an honest relay to the real Tang unlocks.
    const Measured honest = unlock_with("proxy-rec", {"--upstream", upstream_tang});
    CHECK_MESSAGE(honest.exit_code == 0, honest.err);

    check_refused(unlock_with("huge-rec", {}), "larger than");
    check_refused(unlock_with("proxy-rec", {"--upstream", upstream_other}), "HTTP 404");

    const std::string p521 = run_ok({"jose", "jwk", "gen", "-i", R"({"alg":"ECMR","crv":"P-521"})"});
    write_file(dir / "random.jwk", run_ok({"jose", "jwk", "pub", "-i-"}, p521));
    check_refused(unlock_with("rec-file", {"--rec", (dir / "random.jwk").string()}), "does not decrypt");
    const std::string p256 = run_ok({"jose", "jwk", "gen", "-i", R"({"alg":"ECMR","crv":"P-256"})"});
    write_file(dir / "p256.jwk", run_ok({"jose", "jwk", "pub", "-i-"}, p256));
    check_refused(unlock_with("rec-file", {"--rec", (dir / "p256.jwk").string()}), "wrong curve");
    write_file(dir / "off.jwk", R"({"kty":"EC","crv":"P-521","x":"AQ","y":"AQ"})");
    check_refused(unlock_with("rec-file", {"--rec", (dir / "off.jwk").string()}), "invalid Tang recovery reply");
    write_file(dir / "html", "<html>not json</html>");
    check_refused(unlock_with("rec-file", {"--rec", (dir / "html").string()}), "malformed reply");
}

// Issue 18, item 2: the advertisement comes from the server itself (pinned by thp, fetched as /adv/<thp>), then
// its /rec fails, stalls or never ends. bind used to keep such a binding and exit 0 ("server_unreachable"):
// now the proof through the server fails the bind (exit 6) and removes the binding again.
TEST_CASE("an honest advertisement from the server, then /rec refused, stalled or endless: bind fails and rolls back") {
    TangServer tang, other;
    TempDir dir;
    const fs::path adv = dir / "adv.jws";
    write_file(adv, tang.advertisement());
    Image image;
    const auto dump = [&] {  // luksDump without the epoch (a write that was rolled back bumps it)
        std::string out = run_ok({"cryptsetup", "luksDump", image.path.string()});
        const std::size_t epoch = out.find("Epoch:");
        if (epoch != std::string::npos) out.erase(epoch, out.find('\n', epoch) - epoch);
        return out;
    };
    const std::string before = dump();
    const std::string upstream_other = "127.0.0.1:" + std::to_string(other.port());
    struct Case {
        std::string mode;
        std::vector<std::string> extra;
        std::string expected;
    };
    for (const Case& c : {Case{"proxy-rec", {"--upstream", upstream_other}, "HTTP 404"},
                          Case{"stall-rec", {}, "timed out"}, Case{"huge-rec", {}, "larger than"}}) {
        CAPTURE(c.mode);
        std::vector<std::string> extra = c.extra;
        extra.insert(extra.end(), {"--adv", adv.string()});
        HostileTang server(c.mode, extra);
        const Measured m = image.bind(pinned(server.url(), tang.thumbprint()), {"--timeout", "2000"});
        check_refused(m, c.expected);
        CHECK(m.exit_code == 6);
        CHECK_MESSAGE(m.err.find("binding removed again") != std::string::npos, m.err);
        CHECK(dump() == before);
    }
    // The harness itself: the same server relaying /rec to the real Tang gives a verified binding.
    HostileTang honest("proxy-rec", {"--adv", adv.string(), "--upstream", "127.0.0.1:" + std::to_string(tang.port())});
    const Measured bound = image.bind(pinned(honest.url(), tang.thumbprint()), {"--timeout", "2000"});
    CHECK_MESSAGE(bound.exit_code == 0, bound.err);
    CHECK(bound.err.find("NOT verified") == std::string::npos);
}

TEST_CASE("hostile tokens imported with cryptsetup token import never crash or hang list, unlock, inspect") {
    TempDir dir;
    Image image;
    auto b64 = [](const std::string& json) { return trim(run_ok({"jose", "b64", "enc", "-I-"}, json)); };
    std::string deep = R"({"alg":"dir","clevis":{"pin":"sss","sss":{"t":1,"p":"AA","jwe":[)";
    const std::string nested = b64(R"({"clevis":{"pin":"sss","sss":{"t":1,"p":"AA","jwe":["x.y.z.w.v"]}}})") + "....";
    deep += "\"" + nested + "\"]}}}";
    std::string many = R"({"alg":"dir","clevis":{"pin":"sss","sss":{"t":300,"p":"AA","jwe":[)";
    for (int i = 0; i < 300; ++i) many += std::string(i ? "," : "") + "\"a.b.c.d.e\"";
    many += "]}}}";
    const std::vector<std::string> tokens = {
        R"({"type":"clevis","keyslots":["0"],"jwe":{"protected":"!!!","iv":"","ciphertext":"","tag":""}})",
        R"({"type":"clevis","keyslots":["0"],"jwe":{"protected":")" + b64(deep) + R"(","iv":"","ciphertext":"","tag":""}})",
        R"({"type":"clevis","keyslots":["0"],"jwe":{"protected":")" + b64(many) + R"(","iv":"","ciphertext":"","tag":""}})",
        R"({"type":"clevis","keyslots":["0"],"jwe":{"protected":")" +
            b64(R"({"alg":"ECDH-ES","enc":"A256GCM","kid":"x","epk":{"kty":"EC","crv":"P-521","x":"AA","y":"AA"},"clevis":{"pin":"tang","tang":{"url":"http://127.0.0.1:9","adv":{"keys":[]}}}})") +
            R"(","iv":"AA","ciphertext":"AA","tag":"AA"}})",
        R"({"type":"clevis","keyslots":["0"],"jwe":[1,2,3]})",
    };
    for (const std::string& token : tokens) {
        const RunResult imported = run({"cryptsetup", "token", "import", image.path.string()}, token);
        REQUIRE_MESSAGE(imported.exit_code == 0, imported.err);
    }
    check_no_crash(run_measured({"list", image.path.string()}));
    check_no_crash(run_measured({"inspect", image.path.string(), "--json"}));
    const Measured unlock = run_measured({"unlock", image.path.string(), "--test"});
    check_no_crash(unlock);
    CHECK(unlock.exit_code != 0);
    // The build passphrase still opens the volume: nothing was changed by reading hostile tokens.
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-file", image.pass.string(), image.path.string()})
              .exit_code == 0);
}

TEST_CASE("hostile policy files: endless adv files, FIFOs, deep nesting and garbage are refused without hanging") {
    TempDir dir;
    const fs::path fifo = dir / "fifo";
    REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
    const std::vector<std::pair<std::string, std::string>> policies = {
        {"dev-zero", "[[tang]]\nurl = \"http://127.0.0.1:9\"\nadv = \"/dev/zero\"\n"},
        {"fifo", "[[tang]]\nurl = \"http://127.0.0.1:9\"\nadv = \"" + fifo.string() + "\"\n"},
        {"directory", "[[tang]]\nurl = \"http://127.0.0.1:9\"\nadv = \"/\"\n"},
        {"deep-arrays", "x = " + std::string(100000, '[') + std::string(100000, ']') + "\n"},
        {"deep-tables", "x = " + [] {
             std::string s;
             for (int i = 0; i < 20000; ++i) s += "{a=";
             s += "1";
             for (int i = 0; i < 20000; ++i) s += "}";
             return s;
         }() + "\n"},
        {"huge-threshold", "threshold = 18446744073709551615\n[[tang]]\nurl = \"http://127.0.0.1:9\"\nthp = \"x\"\n"},
        {"binary", std::string("\0\xff\xfe[[tang]]\x01", sizeof "\0\xff\xfe[[tang]]\x01" - 1)},
    };
    for (const auto& [name, text] : policies) {
        INFO("policy " << name);
        write_file(dir / (name + ".toml"), text);
        const Measured m = run_measured({"policy", "check", (dir / (name + ".toml")).string()});
        check_no_crash(m);
        CHECK(m.exit_code != 0);
    }
}
