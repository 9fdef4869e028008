// libcryptsetup-token-clevis.so through stock cryptsetup: the handler is loaded by libcryptsetup itself from its
// token directory. cryptsetup 2.6 has no run-time override of that directory (no --external-tokens-path, no
// environment variable; crypt_token_set_external_path() is 2.7+), so every command that should see the
// handler runs in a private mount namespace where a directory holding only the build-tree handler is
// bind-mounted over crypt_token_external_path(). Nothing is installed on the system; outside the namespace
// the same commands do not see the handler, which proves that what opens the volume is the handler.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "luks_image.hpp"
#include "swtpm.hpp"
#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/secret.hpp>

#include <dlfcn.h>
#include <jansson.h>
#include <libcryptsetup.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>
#include <signal.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <filesystem>
#include <string>
#include <thread>
#include <vector>

using namespace luksforge;
using namespace luksforge::test;

#ifndef LUKSFORGE_TOKEN_PLUGIN
TEST_CASE("clevis token handler" * doctest::skip()) {}
#else

// Allocation hooks of this test binary. The handler is dlopen()ed into it and resolves operator new like any
// library does, through the global scope, where the executable comes first: so these definitions are what the
// handler's code calls too. Armed only in a forked child (see the tests using them).
namespace {
std::atomic<bool> g_fail_operator_new{false};
}  // namespace

void* operator new(std::size_t size) {
    if (g_fail_operator_new.load(std::memory_order_relaxed)) throw std::bad_alloc();
    for (;;) {
        if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
        const std::new_handler handler = std::get_new_handler();
        if (handler == nullptr) throw std::bad_alloc();
        handler();
    }
}
// (libstdc++'s operator delete frees with free(), which matches the malloc() above.)

// free() of this binary, for the same reason: the handler's free() is this one. When `g_watched_free` is the pointer
// being freed, it records whether its first `g_watched_size` bytes were all zero, before glibc's free (which
// writes its own bookkeeping into the chunk) gets it.
namespace {
std::atomic<void*> g_watched_free{nullptr};
std::atomic<std::size_t> g_watched_size{0};
std::atomic<int> g_watched_zero{-1};  // -1 not freed yet, 0 freed with data left in it, 1 freed wiped
}  // namespace

extern "C" void __libc_free(void*);
extern "C" void free(void* p) noexcept {
    void* watched = g_watched_free.load(std::memory_order_acquire);
    if (p != nullptr && p == watched && g_watched_free.compare_exchange_strong(watched, nullptr)) {
        const volatile unsigned char* bytes = static_cast<const unsigned char*>(p);
        bool zero = true;
        for (std::size_t i = 0, n = g_watched_size.load(); i < n; ++i) zero = zero && bytes[i] == 0;
        g_watched_zero.store(zero ? 1 : 0, std::memory_order_release);
    }
    __libc_free(p);
}

namespace {

// Run `body` in a forked child; its exit status (or 128+signal when it died of one, e.g. SIGABRT from
// std::terminate).
template <typename Body>
int in_child(Body body) {
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) ::_exit(body());
    int status = 0;
    REQUIRE(::waitpid(pid, &status, 0) == pid);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kPass = "build passphrase for the handler tests";

// A directory with only the build-tree handler, to be mounted over libcryptsetup's token directory.
struct HandlerDir {
    TempDir dir;
    std::filesystem::path token_dir = crypt_token_external_path();
    HandlerDir() {
        std::filesystem::copy_file(LUKSFORGE_TOKEN_PLUGIN, dir / "libcryptsetup-token-clevis.so");
    }
    // `argv` wrapped to run where libcryptsetup loads the handler (private mount namespace, bind mount). The
    // wrappers exec: the process that runs is, in the end, argv's own (same pid).
    std::vector<std::string> wrap(const std::vector<std::string>& argv) const {
        std::vector<std::string> wrapped = {"unshare", "--mount", "--propagation", "private", "sh", "-c",
                                            "d=$1; shift; mount --bind \"$0\" \"$d\" || exit 99; exec \"$@\"",
                                            dir.path().string(), token_dir.string()};
        wrapped.insert(wrapped.end(), argv.begin(), argv.end());
        return wrapped;
    }
    RunResult run(const std::vector<std::string>& argv, const std::string& input = {}) const {
        return test::run(wrap(argv), input);
    }
};

double seconds_since(std::chrono::steady_clock::time_point start) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

// Run `argv` (no stdin), wait until `ready()` (at most 10 s), `delay_s` more, then send it `sig`. Returns what it
// printed and its exit code (128+N when a signal ended it) and how long it ran after the signal.
struct Interrupted {
    RunResult result;
    bool became_ready = false;
    double seconds_after_signal = 0;
};
template <typename Ready>
Interrupted run_and_signal(const std::vector<std::string>& argv, Ready ready, double delay_s, int sig) {
    TempDir out_dir;
    const std::string out_file = (out_dir / "out").string(), err_file = (out_dir / "err").string();
    std::vector<char*> args;
    for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    std::fflush(nullptr);
    const pid_t pid = ::fork();
    REQUIRE(pid >= 0);
    if (pid == 0) {
        const int in = ::open("/dev/null", O_RDONLY);
        const int out = ::open(out_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        const int err = ::open(err_file.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
        if (in < 0 || out < 0 || err < 0) ::_exit(126);
        ::dup2(in, 0);
        ::dup2(out, 1);
        ::dup2(err, 2);
        // Default dispositions and an empty mask, whatever the test runner set: the child installs its own.
        ::signal(SIGINT, SIG_DFL);
        ::signal(SIGTERM, SIG_DFL);
        sigset_t none;
        sigemptyset(&none);
        ::sigprocmask(SIG_SETMASK, &none, nullptr);
        ::execvp(args[0], args.data());
        ::_exit(127);
    }
    Interrupted r;
    const auto start = std::chrono::steady_clock::now();
    int status = 0;
    pid_t done = 0;
    while (!(r.became_ready = ready()) && seconds_since(start) < 10 &&
           (done = ::waitpid(pid, &status, WNOHANG)) == 0)
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
    if (done == 0) {
        std::this_thread::sleep_for(std::chrono::duration<double>(delay_s));
        ::kill(pid, sig);
        const auto signalled = std::chrono::steady_clock::now();
        while ((done = ::waitpid(pid, &status, WNOHANG)) == 0 && seconds_since(signalled) < 20)
            std::this_thread::sleep_for(std::chrono::milliseconds(10));
        r.seconds_after_signal = seconds_since(signalled);
        if (done == 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, &status, 0);
        }
    }
    r.result.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    r.result.out = read_file_bytes(out_file);
    r.result.err = read_file_bytes(err_file);
    return r;
}

struct Image : PassphraseImage {
    Image() : PassphraseImage(kPass) {}
};

std::string pinned(const TangServer& tang) {
    return R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
}

int luksforge_bind(const Image& image, const std::string& pin, const std::string& config) {
    Volume volume = Volume::open(image.path);
    return clevis::bind(volume, pin, config, kPass).keyslot;
}

RunResult open_by_token(const HandlerDir& handler, const Image& image, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> argv = {"cryptsetup", "open", "--test-passphrase", "--token-only", "-v", image.str()};
    argv.insert(argv.end(), extra.begin(), extra.end());
    return handler.run(argv);
}

void check_opens_through_handler(const HandlerDir& handler, const Image& image, int slot) {
    const RunResult r = open_by_token(handler, image);
    CHECK_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.out.find("Key slot " + std::to_string(slot) + " unlocked.") != std::string::npos);
    // The same command without the handler has nothing to open the token with.
    const RunResult without = run({"cryptsetup", "open", "--test-passphrase", "--token-only", image.str()});
    CHECK(without.exit_code != 0);
}

std::string first_clevis_token(const Image& image) {
    const Volume volume = Volume::open(image.path, Volume::Access::read_only);
    for (const Token& t : volume.tokens())
        if (t.type == "clevis") return t.json;
    FAIL("no clevis token");
    return {};
}

// The token with its JWE's protected header edited by `edit` (jansson object in, re-encoded).
template <typename Edit>
std::string with_protected_header(const std::string& token_json, Edit edit) {
    json_t* token = json_loads(token_json.c_str(), 0, nullptr);
    REQUIRE(token != nullptr);
    json_t* jwe = json_object_get(token, "jwe");
    const SecretBuffer decoded = base64url_decode(json_string_value(json_object_get(jwe, "protected")));
    json_t* header = json_loadb(decoded.chars(), decoded.size(), 0, nullptr);
    REQUIRE(header != nullptr);
    edit(header);
    char* text = json_dumps(header, JSON_COMPACT);
    const SecretBuffer encoded = base64url_encode({reinterpret_cast<const std::uint8_t*>(text), std::strlen(text)});
    std::free(text);
    json_object_set_new(jwe, "protected", json_stringn(encoded.chars(), encoded.size()));
    char* out = json_dumps(token, JSON_COMPACT);
    std::string result(out);
    std::free(out);
    json_decref(header);
    json_decref(token);
    return result;
}

void replace_clevis_token(const Image& image, const std::string& json) {
    Volume volume = Volume::open(image.path);
    for (const Token& t : volume.tokens())
        if (t.type == "clevis") volume.remove_token(t.id);
    volume.set_token(json);  // through libcryptsetup without the handler: no clevis validation here
}

// Point the tang binding's token at another server (the JWE no longer decrypts, the request still goes out).
void point_tang_at(const Image& image, const std::string& url) {
    replace_clevis_token(image, with_protected_header(first_clevis_token(image), [&](json_t* header) {
        json_object_set_new(json_object_get(json_object_get(header, "clevis"), "tang"), "url",
                            json_string(url.c_str()));
    }));
}

}  // namespace

TEST_CASE("the handler exports exactly the CRYPTSETUP_TOKEN_1.0 entry points") {
    void* handle = dlopen(LUKSFORGE_TOKEN_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    REQUIRE_MESSAGE(handle != nullptr, dlerror());
    for (const char* symbol : {CRYPT_TOKEN_ABI_OPEN, CRYPT_TOKEN_ABI_BUFFER_FREE, CRYPT_TOKEN_ABI_VALIDATE,
                               CRYPT_TOKEN_ABI_DUMP, CRYPT_TOKEN_ABI_VERSION})
        CHECK_MESSAGE(dlvsym(handle, symbol, CRYPT_TOKEN_ABI_VERSION1) != nullptr, symbol);
    using Version = const char* (*)();
    const auto version = reinterpret_cast<Version>(dlvsym(handle, CRYPT_TOKEN_ABI_VERSION, CRYPT_TOKEN_ABI_VERSION1));
    REQUIRE(reinterpret_cast<void*>(version) != nullptr);
    CHECK(std::string(version()) == LUKSFORGE_TOKEN_VERSION);
    // Nothing of the statically linked luksforge code (or anything else) is visible to the host.
    dlclose(handle);
    const RunResult symbols = run({"nm", "-D", "--defined-only", LUKSFORGE_TOKEN_PLUGIN});
    REQUIRE(symbols.exit_code == 0);
    std::vector<std::string> names;
    std::size_t start = 0;
    while (start < symbols.out.size()) {
        const std::size_t end = symbols.out.find('\n', start);
        const std::string line = symbols.out.substr(start, end - start);
        if (!line.empty()) names.push_back(line.substr(line.rfind(' ') + 1));
        start = end == std::string::npos ? symbols.out.size() : end + 1;
    }
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"CRYPTSETUP_TOKEN_1.0", "cryptsetup_token_buffer_free@@CRYPTSETUP_TOKEN_1.0",
                                            "cryptsetup_token_dump@@CRYPTSETUP_TOKEN_1.0",
                                            "cryptsetup_token_open@@CRYPTSETUP_TOKEN_1.0",
                                            "cryptsetup_token_validate@@CRYPTSETUP_TOKEN_1.0",
                                            "cryptsetup_token_version@@CRYPTSETUP_TOKEN_1.0"});
}

// The handler's entry points called directly, in a process that also has libluksforge.so loaded (the two copies of
// the luksforge code must not see each other).
struct HandlerAbi {
    void* handle = dlopen(LUKSFORGE_TOKEN_PLUGIN, RTLD_NOW | RTLD_LOCAL);
    using Open = int (*)(crypt_device*, int, char**, size_t*, void*);
    using Free = void (*)(void*, size_t);
    using Validate = int (*)(crypt_device*, const char*);
    using Dump = void (*)(crypt_device*, const char*);
    template <typename F>
    F get(const char* name) const { return reinterpret_cast<F>(dlvsym(handle, name, CRYPT_TOKEN_ABI_VERSION1)); }
    Open open = get<Open>(CRYPT_TOKEN_ABI_OPEN);
    Free free = get<Free>(CRYPT_TOKEN_ABI_BUFFER_FREE);
    Validate validate = get<Validate>(CRYPT_TOKEN_ABI_VALIDATE);
    Dump dump = get<Dump>(CRYPT_TOKEN_ABI_DUMP);
    ~HandlerAbi() {
        if (handle) dlclose(handle);
    }
};

TEST_CASE("the handler's open hands libcryptsetup the keyslot passphrase; validate and dump survive garbage") {
    HandlerAbi abi;
    REQUIRE(abi.handle != nullptr);
    TangServer tang;
    Image image;
    luksforge_bind(image, "tang", pinned(tang));
    SecretBuffer expected;
    {
        const Volume volume = Volume::open(image.path, Volume::Access::read_only);
        expected = clevis::unlock(volume).passphrase;
    }
    crypt_device* cd = nullptr;
    REQUIRE(crypt_init(&cd, image.str().c_str()) == 0);
    REQUIRE(crypt_load(cd, CRYPT_LUKS2, nullptr) == 0);
    char* buffer = nullptr;
    size_t length = 0;
    REQUIRE(abi.open(cd, 0, &buffer, &length, nullptr) == 0);
    REQUIRE(buffer != nullptr);
    CHECK(expected.equals({reinterpret_cast<const std::uint8_t*>(buffer), length}));
    abi.free(buffer, length);
    abi.free(nullptr, 0);
    // A token id that does not exist, and Tang down: errors that keep libcryptsetup's token loop going.
    CHECK(abi.open(cd, 7, &buffer, &length, nullptr) == -ENOENT);
    tang.stop();
    CHECK(abi.open(cd, 0, &buffer, &length, nullptr) == -EAGAIN);
    CHECK(buffer == nullptr);
    crypt_free(cd);

    CHECK(abi.validate(nullptr, nullptr) == -EINVAL);
    const std::string deep_array(100000, '[');
    const std::string deep_object = [] {
        std::string s;
        for (int i = 0; i < 20000; ++i) s += R"({"a":)";
        return s;
    }();
    for (const std::string& garbage : {std::string(), std::string("{"), std::string("null"), std::string("[]"),
                                       std::string(R"({"type":"clevis"})"), std::string(R"({"type":"clevis","keyslots":["1"],"jwe":[]})"),
                                       deep_array, deep_object, std::string(2u << 20, ' ')}) {
        CHECK(abi.validate(nullptr, garbage.c_str()) == -EINVAL);
        abi.dump(nullptr, garbage.c_str());  // prints "malformed token", must not crash
    }
}

// libcryptsetup hands the buffer back to cryptsetup_token_buffer_free, which must wipe it before free().
TEST_CASE("buffer_free zeroes the passphrase buffer before it is freed") {
    HandlerAbi abi;
    REQUIRE(abi.handle != nullptr);
    TangServer tang;
    Image image;
    luksforge_bind(image, "tang", pinned(tang));
    crypt_device* cd = nullptr;
    REQUIRE(crypt_init(&cd, image.str().c_str()) == 0);
    REQUIRE(crypt_load(cd, CRYPT_LUKS2, nullptr) == 0);
    char* buffer = nullptr;
    size_t length = 0;
    REQUIRE(abi.open(cd, 0, &buffer, &length, nullptr) == 0);
    crypt_free(cd);
    REQUIRE(buffer != nullptr);
    REQUIRE(length > 0);
    CHECK(std::any_of(buffer, buffer + length, [](char c) { return c != 0; }));  // a real passphrase to wipe
    g_watched_zero = -1;
    g_watched_size = length;
    g_watched_free = buffer;
    abi.free(buffer, length);
    const int wiped = g_watched_zero.load();
    g_watched_free = nullptr;
    CHECK_MESSAGE(wiped != -1, "the handler did not free() the buffer it was given");
    CHECK_MESSAGE(wiped == 1, "the passphrase buffer was freed without being wiped");
}

// validate and dump catch everything; their catch blocks must not allocate either, or a std::bad_alloc thrown
// there escapes a noexcept function and std::terminate aborts the host (cryptsetup, systemd-cryptsetup).
TEST_CASE("validate and dump survive operator new failing everywhere, their error paths included") {
    HandlerAbi abi;
    REQUIRE(abi.handle != nullptr);
    const char* token = R"({"type":"clevis","keyslots":["1"],"jwe":{}})";
    // Sanity: without failing allocations, this token is refused normally.
    REQUIRE(abi.validate(nullptr, token) == -EINVAL);
    const int validated = in_child([&] {
        g_fail_operator_new = true;
        const int r = abi.validate(nullptr, token);
        g_fail_operator_new = false;
        return r == -EINVAL ? 0 : 1;
    });
    CHECK_MESSAGE(validated == 0, "validate under failing operator new: exit ", validated, " (134 = SIGABRT)");
    const int dumped = in_child([&] {
        g_fail_operator_new = true;
        abi.dump(nullptr, token);
        g_fail_operator_new = false;
        return 0;
    });
    CHECK_MESSAGE(dumped == 0, "dump under failing operator new: exit ", dumped, " (134 = SIGABRT)");
}

TEST_CASE("cryptsetup open --token-only opens a luksforge tang binding through the handler") {
    HandlerDir handler;
    TangServer tang;
    Image image;
    const int slot = luksforge_bind(image, "tang", pinned(tang));
    check_opens_through_handler(handler, image, slot);

    SUBCASE("luksDump -v shows the handler's lines; plain luksDump keeps Clevis's layout") {
        const RunResult verbose = handler.run({"cryptsetup", "luksDump", "-v", image.str()});
        REQUIRE(verbose.exit_code == 0);
        CHECK(verbose.out.find("  0: clevis\n\tClevis pin: tang " + tang.url() + "\n\tKeyslot:    " +
                               std::to_string(slot) + "\n") != std::string::npos);
        // Stock Clevis finds a keyslot's token as the line right before "Keyslot: N" (grep -B1).
        const RunResult plain = handler.run({"cryptsetup", "luksDump", image.str()});
        CHECK(plain.out.find("  0: clevis\n\tKeyslot:    " + std::to_string(slot) + "\n") != std::string::npos);
        const RunResult pass = handler.run({"clevis", "luks", "pass", "-d", image.str(), "-s", std::to_string(slot)});
        CHECK_MESSAGE(pass.exit_code == 0, pass.err);
    }

    SUBCASE("no secret reaches libcryptsetup's log, even with --debug") {
        const Volume volume = Volume::open(image.path, Volume::Access::read_only);
        const clevis::Unlocked unlocked = clevis::unlock(volume);
        const RunResult debug = open_by_token(handler, image, {"--debug"});
        CHECK(debug.exit_code == 0);
        CHECK(debug.out.find("Token handler clevis-" LUKSFORGE_TOKEN_VERSION " loaded successfully") != std::string::npos);
        const std::string passphrase(unlocked.passphrase.view());
        CHECK(debug.out.find(passphrase) == std::string::npos);
        CHECK(debug.err.find(passphrase) == std::string::npos);
    }

    SUBCASE("Tang down: a clear failure naming the server") {
        tang.stop();
        const RunResult r = open_by_token(handler, image);
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find("Token 0 (clevis): Tang unavailable") != std::string::npos, r.err);
        CHECK(r.err.find(tang.url()) != std::string::npos);
    }

    SUBCASE("a tampered JWE is refused after the exchange, and cryptsetup is told no token opened") {
        replace_clevis_token(image, with_protected_header(first_clevis_token(image), [](json_t* header) {
            json_object_set_new(header, "luksforge-test", json_string("tampered"));  // AAD changes
        }));
        const RunResult r = open_by_token(handler, image);
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find("JWE does not decrypt") != std::string::npos, r.err);
    }

    SUBCASE("a server that never answers costs the bounded request time, then fails") {
        BadServer stalled(200, "{}", 40);
        point_tang_at(image, stalled.url());
        const auto start = std::chrono::steady_clock::now();
        const RunResult r = open_by_token(handler, image);
        const double seconds = seconds_since(start);
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find("timed out") != std::string::npos, r.err);
        // The handler's total bound per request is 10 s: neither cut short nor the server's 40 s.
        CHECK_MESSAGE(seconds >= 9.5, seconds);
        CHECK_MESSAGE(seconds < 13, seconds);
    }

    SUBCASE("a server that never completes the TCP handshake costs the connect timeout, then fails") {
        UnansweredServer silent;
        point_tang_at(image, silent.url());
        const auto start = std::chrono::steady_clock::now();
        const RunResult r = open_by_token(handler, image);
        const double seconds = seconds_since(start);
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find("Tang server timed out: POST " + silent.url()) != std::string::npos, r.err);
        // libcurl's words for a timeout in the connect phase (7.88: "Failed to connect to ... after 3000 ms: Timeout
        // was reached"; older: "Connection timed out after 3001 milliseconds").
        CHECK_MESSAGE((r.err.find("Failed to connect to 127.0.0.1") != std::string::npos ||
                       r.err.find("Connection timed out after") != std::string::npos),
                      r.err);
        // The connect timeout is 3 s (the total, 10 s, must not be what ended it).
        CHECK_MESSAGE(seconds >= 2.8, seconds);
        CHECK_MESSAGE(seconds < 6.5, seconds);
    }
}

// The ABI has no cancel hook and cryptsetup's own SIGINT/SIGTERM handler only sets a flag it reads after the
// token loop: the handler notices the signal itself while it waits for Tang, so Ctrl-C or systemd's SIGTERM ends a
// stalled unlock at once instead of after the 10 s total timeout.
TEST_CASE("SIGINT or SIGTERM during a stalled Tang request: cryptsetup open --token-only returns promptly") {
    HandlerDir handler;
    TangServer tang;
    Image image;
    luksforge_bind(image, "tang", pinned(tang));
    std::string passphrase;
    {
        const Volume volume = Volume::open(image.path, Volume::Access::read_only);
        passphrase = std::string(clevis::unlock(volume).passphrase.view());
    }
    for (const int sig : {SIGINT, SIGTERM}) {
        CAPTURE(sig);
        BadServer stalled(200, "{}", 40);
        point_tang_at(image, stalled.url());
        const Interrupted r = run_and_signal(
            handler.wrap({"cryptsetup", "open", "--test-passphrase", "--token-only", "-v", image.str()}),
            [&] { return stalled.requested(); }, 0.8, sig);
        REQUIRE_MESSAGE(r.became_ready, r.result.err);
        // cryptsetup's handler saw the signal too: it ends with its own failure code, not killed by the signal.
        CHECK_MESSAGE(r.result.exit_code == 1, r.result.exit_code, ": ", r.result.err);
        CHECK_MESSAGE(r.seconds_after_signal < 3, r.seconds_after_signal, " s: ", r.result.err);
        const std::string expected =
            std::string("Token 0 (clevis): cancelled by ") + (sig == SIGINT ? "SIGINT" : "SIGTERM");
        CHECK_MESSAGE(r.result.err.find(expected) != std::string::npos, r.result.err);
        CHECK(r.result.out.find(passphrase) == std::string::npos);
        CHECK(r.result.err.find(passphrase) == std::string::npos);
    }

    // sss over two stalled servers (bound offline with the real Tang's advertisement): the children, which run in
    // threads of their own, are cancelled too.
    BadServer stalled_a(200, "{}", 40), stalled_b(200, "{}", 40);
    Image sss_image;
    const std::string adv = tang.advertisement();
    {
        clevis::BindOptions unproven;  // the servers never answer: nothing to prove the binding with
        unproven.verify = false;
        Volume volume = Volume::open(sss_image.path);
        clevis::bind(volume, "sss",
                     R"({"t":1,"pins":{"tang":[{"url":")" + stalled_a.url() + R"(","adv":)" + adv + R"(},{"url":")" +
                         stalled_b.url() + R"(","adv":)" + adv + "}]}}",
                     kPass, unproven);
    }
    const Interrupted r = run_and_signal(
        handler.wrap({"cryptsetup", "open", "--test-passphrase", "--token-only", "-v", sss_image.str()}),
        [&] { return stalled_a.requested() && stalled_b.requested(); }, 0.8, SIGINT);
    REQUIRE_MESSAGE(r.became_ready, r.result.err);
    CHECK_MESSAGE(r.result.exit_code == 1, r.result.exit_code, ": ", r.result.err);
    CHECK_MESSAGE(r.seconds_after_signal < 3, r.seconds_after_signal, " s: ", r.result.err);
    CHECK_MESSAGE(r.result.err.find("Token 0 (clevis): cancelled by SIGINT") != std::string::npos, r.result.err);
}

namespace {
std::atomic<int> g_host_signals{0};
extern "C" void count_host_signal(int) { g_host_signals.fetch_add(1); }
}  // namespace

TEST_CASE("open cancelled by a signal: -ECANCELED, the host's handler still runs and is back in place afterwards") {
    HandlerAbi abi;
    REQUIRE(abi.handle != nullptr);
    TangServer tang;
    Image image;
    luksforge_bind(image, "tang", pinned(tang));
    BadServer stalled(200, "{}", 40);
    point_tang_at(image, stalled.url());

    struct sigaction host = {}, saved_int = {}, saved_term = {}, now = {};
    host.sa_handler = &count_host_signal;
    sigemptyset(&host.sa_mask);
    REQUIRE(::sigaction(SIGINT, &host, &saved_int) == 0);
    REQUIRE(::sigaction(SIGTERM, nullptr, &saved_term) == 0);
    g_host_signals = 0;
    crypt_device* cd = nullptr;
    REQUIRE(crypt_init(&cd, image.str().c_str()) == 0);
    REQUIRE(crypt_load(cd, CRYPT_LUKS2, nullptr) == 0);
    std::atomic<bool> sent{false};
    std::chrono::steady_clock::time_point sent_at;
    std::thread sender([&] {
        const auto start = std::chrono::steady_clock::now();
        while (!stalled.requested() && seconds_since(start) < 10)
            std::this_thread::sleep_for(std::chrono::milliseconds(20));
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        sent_at = std::chrono::steady_clock::now();
        sent = true;
        ::kill(::getpid(), SIGINT);
    });
    char* buffer = nullptr;
    size_t length = 0;
    const int r = abi.open(cd, 0, &buffer, &length, nullptr);
    const auto returned = std::chrono::steady_clock::now();
    sender.join();
    CHECK(r == -ECANCELED);
    CHECK(buffer == nullptr);
    REQUIRE(sent);
    CHECK(std::chrono::duration<double>(returned - sent_at).count() < 3);
    CHECK(g_host_signals == 1);
    // Back to the host's handlers: SIGINT's, and SIGTERM's (doctest's here) that the handler chained to as well.
    REQUIRE(::sigaction(SIGINT, nullptr, &now) == 0);
    CHECK((now.sa_flags & SA_SIGINFO) == 0);
    CHECK(reinterpret_cast<void*>(now.sa_handler) == reinterpret_cast<void*>(&count_host_signal));
    REQUIRE(::sigaction(SIGTERM, nullptr, &now) == 0);
    CHECK((now.sa_flags & SA_SIGINFO) == (saved_term.sa_flags & SA_SIGINFO));
    CHECK(reinterpret_cast<void*>(now.sa_handler) == reinterpret_cast<void*>(saved_term.sa_handler));
    // The cancellation does not stick: the next open asks Tang again, the real one. (Whether the JWE still
    // decrypts depends on the header edit giving back the original bytes; either way it is not cancelled.)
    point_tang_at(image, tang.url());
    crypt_free(cd);
    REQUIRE(crypt_init(&cd, image.str().c_str()) == 0);
    REQUIRE(crypt_load(cd, CRYPT_LUKS2, nullptr) == 0);
    const int again = abi.open(cd, 0, &buffer, &length, nullptr);
    CHECK_MESSAGE((again == 0 || again == -EPERM), again);
    if (again == 0) abi.free(buffer, length);
    crypt_free(cd);
    ::sigaction(SIGINT, &saved_int, nullptr);
}

TEST_CASE("the handler opens a luksforge sss binding with one of three Tang servers down") {
    HandlerDir handler;
    TangServer a, b, c;
    Image image;
    const int slot = luksforge_bind(image, "sss",
                                    R"({"t":2,"pins":{"tang":[)" + pinned(a) + "," + pinned(b) + "," + pinned(c) + "]}}");
    c.stop();
    check_opens_through_handler(handler, image, slot);
    const RunResult dump = handler.run({"cryptsetup", "luksDump", "-v", image.str()});
    CHECK(dump.out.find("\tClevis pin: sss (2 of 3)\n\tShare 1:    tang " + a.url() + "\n\tShare 2:    tang " +
                        b.url() + "\n\tShare 3:    tang " + c.url() + "\n") != std::string::npos);
    b.stop();
    const RunResult r = open_by_token(handler, image);
    CHECK(r.exit_code != 0);
    CHECK(r.err.find("Token 0 (clevis): Tang unavailable") != std::string::npos);
}

// The handler goes into every initramfs that unlocks through it: it must not need tpm2-tss (nor its TCTI
// modules) to reach Tang. A tpm2 share is left to Clevis; an sss binding still opens through its Tang share.
TEST_CASE("the handler needs no tpm2-tss; sss over tang and tpm2 opens through the Tang share, tpm2 alone is passed on") {
    const RunResult needed = run({"readelf", "-d", LUKSFORGE_TOKEN_PLUGIN});
    REQUIRE(needed.exit_code == 0);
    CHECK(needed.out.find("(NEEDED)") != std::string::npos);
    CHECK_MESSAGE(needed.out.find("libtss2") == std::string::npos, needed.out);
    // libluksforge loads libcurl on first use; the handler must name it, or ldd-following initramfs builders
    // (dracut's inst_library, initramfs-tools' copy_exec) would leave it out and Tang could not be reached.
    CHECK_MESSAGE(needed.out.find("[libcurl.so.4]") != std::string::npos, needed.out);

    HandlerDir handler;
    SoftwareTpm tpm;
    TangServer tang;
    Image image;
    const int sss_slot = luksforge_bind(image, "sss", R"({"t":1,"pins":{"tpm2":{},"tang":[)" + pinned(tang) + "]}}");
    check_opens_through_handler(handler, image, sss_slot);

    Image tpm2_only;
    luksforge_bind(tpm2_only, "tpm2", "{}");
    const RunResult r = open_by_token(handler, tpm2_only);
    CHECK(r.exit_code != 0);
    CHECK_MESSAGE(r.out.find("Token 0 (clevis): pin not supported by this handler") != std::string::npos, r.out);
}

TEST_CASE("stock clevis binds (tang, nested sss) with the handler installed, and the handler opens them") {
    HandlerDir handler;
    TangServer a, b;
    Image image;
    // clevis luks bind stores its token with `cryptsetup token import`: the handler's validate accepts it.
    RunResult bound = handler.run({"clevis", "luks", "bind", "-y", "-d", image.str(), "-k", image.pass_file.string(),
                                   "-s", "2", "tang", R"({"url":")" + a.url() + R"("})"});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    check_opens_through_handler(handler, image, 2);

    const std::string nested = R"({"t":2,"pins":{"tang":[{"url":")" + a.url() +
                               R"("}],"sss":{"t":1,"pins":{"tang":[{"url":")" + b.url() + R"("}]}}}})";
    bound = handler.run({"clevis", "luks", "bind", "-y", "-d", image.str(), "-k", image.pass_file.string(), "-s", "5",
                         "sss", nested});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    const RunResult dump = handler.run({"cryptsetup", "luksDump", "-v", image.str()});
    CHECK(dump.out.find("\tClevis pin: sss (2 of 2)\n\tShare 1:    tang " + a.url() + "\n\tShare 2:    sss (1 of 1)\n"
                        "\tShare 2.1:  tang " + b.url() + "\n\tKeyslot:    5\n") != std::string::npos);
    // Only the sss token: stock unbind (which parses luksDump) works with the handler installed.
    const RunResult unbound = handler.run({"clevis", "luks", "unbind", "-f", "-d", image.str(), "-s", "2"});
    REQUIRE_MESSAGE(unbound.exit_code == 0, unbound.err);
    const RunResult r = open_by_token(handler, image, {"--token-id", "1"});
    CHECK_MESSAGE(r.exit_code == 0, r.err);
    CHECK(r.out.find("Key slot 5 unlocked.") != std::string::npos);
    CHECK(handler.run({"clevis", "luks", "list", "-d", image.str()}).out == "5: sss '" + nested + "'\n");
}

TEST_CASE("validate: cryptsetup token import refuses malformed clevis tokens, never crashes") {
    HandlerDir handler;
    TangServer tang;
    Image image;
    luksforge_bind(image, "tang", pinned(tang));
    const std::string good = first_clevis_token(image);
    const auto import = [&](const std::string& json) {
        return handler.run({"cryptsetup", "token", "import", image.str()}, json);
    };
    // The real token imports again (as a second token) — validate accepts what bind wrote.
    REQUIRE(import(good).exit_code == 0);

    const std::string jwe_prefix = R"({"type":"clevis","keyslots":["1"],"jwe":)";
    const std::string b64_16 = "AAAAAAAAAAAAAAAAAAAAAA";  // 16 bytes
    const std::string b64_12 = "AAAAAAAAAAAAAAAA";        // 12 bytes
    const auto jwe = [&](const std::string& protected_b64, const std::string& iv = "AAAAAAAAAAAAAAAA",
                         const std::string& tag = "AAAAAAAAAAAAAAAAAAAAAA") {
        return jwe_prefix + R"({"protected":")" + protected_b64 + R"(","encrypted_key":"","iv":")" + iv +
               R"(","ciphertext":"AAAA","tag":")" + tag + R"("}})";
    };
    const auto b64 = [](const std::string& json) {
        return std::string(base64url_encode({reinterpret_cast<const std::uint8_t*>(json.data()), json.size()}).view());
    };
    const std::string tang_header =
        R"({"alg":"ECDH-ES","enc":"A256GCM","kid":"k","epk":{"kty":"EC","crv":"P-521"},"clevis":{"pin":"tang","tang":{"url":"http://x","adv":{"keys":[{}]}}}})";
    // Sanity of the hand-made JWE: a structurally valid tang token is accepted (it just cannot decrypt).
    CHECK(import(jwe(b64(tang_header))).exit_code == 0);
    // A Tang URL without a scheme is http to Clevis.
    std::string schemeless = tang_header;
    schemeless.replace(schemeless.find("http://x"), 8, "tang.example:7500");
    CHECK(import(jwe(b64(schemeless))).exit_code == 0);
    // Another Clevis pin (tpm2 here) is a valid token this handler passes on: stock Clevis must still bind it.
    CHECK(import(jwe(b64(R"({"alg":"dir","enc":"A256GCM","clevis":{"pin":"tpm2","tpm2":{}}})"))).exit_code == 0);

    const std::vector<std::pair<std::string, std::string>> malformed = {
        {"no jwe", R"({"type":"clevis","keyslots":["1"]})"},
        {"jwe not an object", jwe_prefix + R"("abc"})"},
        {"protected not base64url", jwe("!!!")},
        {"protected not JSON", jwe(b64("not json"))},
        {"no clevis member", jwe(b64(R"({"alg":"ECDH-ES","enc":"A256GCM"})"))},
        {"wrong enc", jwe(b64(R"({"alg":"dir","enc":"A128CBC-HS256","clevis":{"pin":"tpm2"}})"))},
        {"IV of 16 bytes", jwe(b64(tang_header), b64_16)},
        {"tag of 12 bytes", jwe(b64(tang_header), b64_12, b64_12)},
        {"tang without url", jwe(b64(R"({"alg":"ECDH-ES","enc":"A256GCM","kid":"k","epk":{"kty":"EC","crv":"P-521"},"clevis":{"pin":"tang","tang":{"adv":{"keys":[{}]}}}})"))},
        {"tang url not http", jwe(b64(R"({"alg":"ECDH-ES","enc":"A256GCM","kid":"k","epk":{"kty":"EC","crv":"P-521"},"clevis":{"pin":"tang","tang":{"url":"file:///etc/passwd","adv":{"keys":[{}]}}}})"))},
        {"sss t larger than shares", jwe(b64(R"({"alg":"dir","enc":"A256GCM","clevis":{"pin":"sss","sss":{"t":2,"p":"AA","jwe":["a.b.c.d.e"]}}})"))},
        {"sss share not a JWE", jwe(b64(R"({"alg":"dir","enc":"A256GCM","clevis":{"pin":"sss","sss":{"t":1,"p":"AA","jwe":["abc"]}}})"))},
    };
    for (const auto& [what, json] : malformed) {
        const RunResult r = import(json);
        CHECK_MESSAGE(r.exit_code == 1, what, ": ", r.err);
        CHECK_MESSAGE(r.err.find("Invalid clevis token") != std::string::npos, what, ": ", r.err);
    }
    // sss nested beyond the handler's depth limit.
    std::string deep = tang_header;
    for (int i = 0; i < 10; ++i) {
        const std::string child = b64(deep) + "..AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA";
        deep = R"({"alg":"dir","enc":"A256GCM","clevis":{"pin":"sss","sss":{"t":1,"p":"AA","jwe":[")" + child + R"("]}}})";
    }
    CHECK(import(jwe(b64(deep))).exit_code == 1);

    // Every truncation and a sweep of byte flips of the real token: import may refuse, cryptsetup never dies
    // of a signal (it would exit 128+N). The valid ones go in as extra tokens; keep the header from filling up.
    for (std::size_t cut = 0; cut < good.size(); cut += good.size() / 40 + 1) {
        const RunResult r = import(good.substr(0, cut));
        CHECK_MESSAGE(r.exit_code <= 1, "cut at ", cut, ": ", r.err);
    }
    for (std::size_t at = 0; at < good.size(); at += good.size() / 40 + 1) {
        std::string flipped = good;
        flipped[at] = static_cast<char>(flipped[at] ^ 0x01);
        const RunResult r = import(flipped);
        CHECK_MESSAGE(r.exit_code <= 1, "flip at ", at, ": ", r.err);
        if (r.exit_code == 0) {
            Volume volume = Volume::open(image.path);
            const auto tokens = volume.tokens();
            volume.remove_token(tokens.back().id);
        }
    }
}

#endif
