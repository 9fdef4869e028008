// The sss pin: Shamir arithmetic on its own, then t-of-n over three real Tang servers on loopback — servers
// down, slow servers, nested sss, tampering — and interoperability both ways with stock `clevis encrypt sss`,
// `clevis decrypt`, `clevis luks bind ... sss` and `clevis luks pass`.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "tang_server.hpp"
#include "testutil.hpp"

#include "../lib/src/pins/sss.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/pin.hpp>

#include <openssl/bn.h>

#include <algorithm>
#include <chrono>
#include <numeric>
#include <random>
#include <set>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;

std::span<const std::uint8_t> bytes_of(std::string_view text) {
    return {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()};
}

std::string tang_entry(const TangServer& server) {
    return R"({"url":")" + server.url() + R"(","thp":")" + server.thumbprint() + R"("})";
}

std::string sss_config(int t, const std::vector<const TangServer*>& servers) {
    std::string config = R"({"t":)" + std::to_string(t) + R"(,"pins":{"tang":[)";
    for (std::size_t i = 0; i < servers.size(); ++i) config += (i ? "," : "") + tang_entry(*servers[i]);
    return config + "]}}";
}

// base64url helpers over the jose CLI would spawn processes; decode/encode the header with OpenSSL-free code.
std::string b64u_decode(std::string_view text) {
    static const std::string alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string out;
    unsigned buffer = 0;
    int bits = 0;
    for (char c : text) {
        const auto index = alphabet.find(c);
        REQUIRE(index != std::string::npos);
        buffer = (buffer << 6) | static_cast<unsigned>(index);
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            out += static_cast<char>((buffer >> bits) & 0xff);
        }
    }
    return out;
}
std::string b64u_encode(std::string_view data) {
    static const char* alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    std::string out;
    unsigned buffer = 0;
    int bits = 0;
    for (unsigned char c : data) {
        buffer = (buffer << 8) | c;
        bits += 8;
        while (bits >= 6) {
            bits -= 6;
            out += alphabet[(buffer >> bits) & 0x3f];
        }
    }
    if (bits > 0) out += alphabet[(buffer << (6 - bits)) & 0x3f];
    return out;
}

std::vector<std::string> split_dots(const std::string& jwe) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (std::size_t dot; (dot = jwe.find('.', start)) != std::string::npos; start = dot + 1)
        parts.push_back(jwe.substr(start, dot - start));
    parts.push_back(jwe.substr(start));
    return parts;
}

std::string decrypt_to_string(const std::string& jwe, const PinOptions& options = {}) {
    SecretBuffer plain = clevis_decrypt(jwe, options);
    return std::string(plain.view());
}

std::uint64_t be16(const SecretBuffer& buffer, std::size_t offset) {
    return (std::uint64_t{buffer.data()[offset]} << 8) | buffer.data()[offset + 1];
}

std::uint64_t pow_mod(std::uint64_t base, std::uint64_t exponent, std::uint64_t p) {
    std::uint64_t result = 1;
    base %= p;
    for (; exponent; exponent >>= 1, base = base * base % p)
        if (exponent & 1) result = result * base % p;
    return result;
}

}  // namespace

// ---- Shamir arithmetic ---------------------------------------------------------------------------------------

TEST_CASE("shamir: a fresh 256-bit safe prime per call") {
    const auto p1 = detail::shamir_generate_prime(32);
    const auto p2 = detail::shamir_generate_prime(32);
    REQUIRE(p1.size() == 32);
    CHECK(p1 != p2);
    CHECK((p1[0] & 0x80) != 0);  // exactly 256 bits: Clevis encodes p in 32 bytes

    BIGNUM* p = BN_bin2bn(p1.data(), 32, nullptr);
    BIGNUM* q = BN_dup(p);
    BN_CTX* ctx = BN_CTX_new();
    REQUIRE(BN_rshift1(q, q) == 1);  // (p-1)/2 for odd p
    CHECK(BN_check_prime(p, ctx, nullptr) == 1);
    CHECK(BN_check_prime(q, ctx, nullptr) == 1);
    BN_free(p);
    BN_free(q);
    BN_CTX_free(ctx);
}

TEST_CASE("shamir: known answer over GF(65521)") {
    // f(x) = 1234 + 5678 x: f(1) = 6912, f(2) = 12590, f(3) = 18268.
    const std::vector<std::uint8_t> p = {0xff, 0xf1};
    const std::uint8_t b1[] = {0, 1, 0x1b, 0x00}, b2[] = {0, 2, 0x31, 0x2e}, b3[] = {0, 3, 0x47, 0x5c};
    using Share = std::span<const std::uint8_t>;
    const Share s1(b1), s2(b2), s3(b3);
    for (auto pair : {std::pair{s1, s2}, std::pair{s2, s3}, std::pair{s3, s1}}) {
        const SecretBuffer secret = detail::shamir_combine(p, std::vector<Share>{pair.first, pair.second});
        REQUIRE(secret.size() == 2);
        CHECK(be16(secret, 0) == 1234);
    }
    // Three points of a line also interpolate to its intercept.
    CHECK(be16(detail::shamir_combine(p, std::vector<Share>{s1, s2, s3}), 0) == 1234);
    // One point of a degree-1 polynomial says nothing about the secret.
    CHECK(be16(detail::shamir_combine(p, std::vector<Share>{s2}), 0) != 1234);
}

TEST_CASE("shamir: shares lie on one polynomial of degree t-1 (independent check in uint64 arithmetic)") {
    const std::vector<std::uint8_t> p = {0xff, 0xf1};
    const std::uint64_t P = 65521;
    for (int round = 0; round < 20; ++round) {
        // t = 1: every share carries the secret itself.
        auto one = detail::shamir_split(p, 1, 3);
        for (const auto& share : one.shares) CHECK(be16(share, 2) == be16(one.secret, 0));
        // t = 2: all shares on the line through (0, secret).
        auto two = detail::shamir_split(p, 2, 4);
        const std::uint64_t secret = be16(two.secret, 0);
        const std::uint64_t x0 = be16(two.shares[0], 0), y0 = be16(two.shares[0], 2);
        REQUIRE(x0 != 0);
        const std::uint64_t slope = (y0 + P - secret) % P * pow_mod(x0, P - 2, P) % P;
        for (const auto& share : two.shares) {
            const std::uint64_t x = be16(share, 0), y = be16(share, 2);
            CHECK(x != 0);
            CHECK((secret + slope * x) % P == y);
        }
        std::set<std::uint64_t> xs;
        for (const auto& share : two.shares) xs.insert(be16(share, 0));
        CHECK(xs.size() == two.shares.size());
    }
}

TEST_CASE("shamir: random t-of-n subsets recombine over a 256-bit safe prime; t-1 shares do not") {
    const auto prime = detail::shamir_generate_prime(32);
    std::mt19937 rng(12345);
    for (auto [t, n] : {std::pair{1, 1}, {1, 3}, {2, 3}, {3, 5}, {4, 7}, {5, 5}, {7, 10}}) {
        CAPTURE(t);
        CAPTURE(n);
        const auto split = detail::shamir_split(prime, t, n);
        REQUIRE(split.shares.size() == static_cast<std::size_t>(n));
        REQUIRE(split.secret.size() == 32);
        for (const auto& share : split.shares) REQUIRE(share.size() == 64);
        std::vector<std::size_t> order(n);
        std::iota(order.begin(), order.end(), 0);
        for (int trial = 0; trial < 8; ++trial) {
            std::shuffle(order.begin(), order.end(), rng);
            std::vector<std::span<const std::uint8_t>> chosen;
            for (int i = 0; i < t; ++i) chosen.push_back(split.shares[order[i]].bytes());
            CHECK(detail::shamir_combine(prime, chosen).equals(split.secret.bytes()));
            if (t > 1) {
                chosen.pop_back();
                CHECK_FALSE(detail::shamir_combine(prime, chosen).equals(split.secret.bytes()));
            }
        }
    }
}

TEST_CASE("shamir: bad shares and thresholds are refused") {
    const auto prime = detail::shamir_generate_prime(32);
    const auto split = detail::shamir_split(prime, 2, 3);
    CHECK_THROWS_AS(detail::shamir_split(prime, 0, 3), FormatError);
    CHECK_THROWS_AS(detail::shamir_split(prime, 4, 3), FormatError);
    // Same share twice: the same x.
    CHECK_THROWS_AS(detail::shamir_combine(prime, {split.shares[0].bytes(), split.shares[0].bytes()}), FormatError);
    // Wrong length.
    CHECK_THROWS_AS(detail::shamir_combine(prime, {split.shares[0].bytes().first(63), split.shares[1].bytes()}),
                    FormatError);
    // y not below p.
    std::vector<std::uint8_t> bad(split.shares[1].bytes().begin(), split.shares[1].bytes().end());
    for (std::size_t i = 32; i < bad.size(); ++i) bad[i] = 0xff;
    CHECK_THROWS_AS(detail::shamir_combine(prime, {split.shares[0].bytes(), bad}), FormatError);
}

// ---- the pin over real Tang servers ---------------------------------------------------------------------------

TEST_CASE("sss 2-of-3 over three Tang servers: all up, one down, two down") {
    TangServer a, b, c;
    const std::string config = sss_config(2, {&a, &b, &c});
    const std::string jwe = clevis_encrypt("sss", config, bytes_of("the sss secret"));

    const auto header = b64u_decode(split_dots(jwe)[0]);
    CHECK(header.find(R"("alg":"dir")") != std::string::npos);
    CHECK(header.find(R"("enc":"A256GCM")") != std::string::npos);
    CHECK(header.find(R"("pin":"sss")") != std::string::npos);
    CHECK(header.find(R"("t":2)") != std::string::npos);
    CHECK(split_dots(jwe)[1].empty());

    CHECK(decrypt_to_string(jwe) == "the sss secret");
    b.stop();
    CHECK(decrypt_to_string(jwe) == "the sss secret");
    a.stop();
    const auto started = std::chrono::steady_clock::now();
    try {
        decrypt_to_string(jwe);
        FAIL("decrypt succeeded with two of three servers down");
    } catch (const TangError& e) {
        const std::string message = e.what();
        INFO(message);
        CHECK(message.find("of the 2 shares needed") != std::string::npos);
        CHECK(message.find("child 0 (tang " + a.url() + "): ") != std::string::npos);
        CHECK(message.find("child 1 (tang " + b.url() + "): ") != std::string::npos);
        CHECK(message.find("onnect") != std::string::npos);  // says why: connection refused
        // The working server is not blamed: at most it was abandoned once the threshold became unreachable.
        const auto live = message.find("child 2 (tang " + c.url() + "): ");
        if (live != std::string::npos)
            CHECK(message.substr(live).rfind("child 2 (tang " + c.url() + "): abandoned", 0) == 0);
    }
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(3));
}

TEST_CASE("sss decrypt contacts children concurrently and stops at t successes") {
    TangServer a, b;
    BadServer slow(200, "{}", 6.0);  // answers every request, but only after 6 s
    // Encrypt against the three (the slow one's advertisement comes from a real Tang, offline).
    TangServer donor;
    TempDir dir;
    write_file(dir / "donor.jws", donor.advertisement());
    const std::string config = R"({"t":2,"pins":{"tang":[)" + tang_entry(a) + R"(,{"url":")" + slow.url() +
                               R"(","adv":")" + (dir / "donor.jws").string() + R"("},)" + tang_entry(b) + "]}}";
    const std::string jwe = clevis_encrypt("sss", config, bytes_of("fast"));

    auto started = std::chrono::steady_clock::now();
    CHECK(decrypt_to_string(jwe) == "fast");
    CHECK(std::chrono::steady_clock::now() - started < std::chrono::seconds(3));

    // With the fast pair reduced to one, the slow server is needed and the per-server timeout decides.
    b.stop();
    PinOptions options;
    options.network.total_timeout_ms = 1000;
    started = std::chrono::steady_clock::now();
    try {
        decrypt_to_string(jwe, options);
        FAIL("decrypt succeeded without enough shares");
    } catch (const TangError& e) {
        const std::string message = e.what();
        INFO(message);
        CHECK(message.find("child 1 (tang " + slow.url() + ")") != std::string::npos);
        CHECK(message.find("child 2 (tang " + b.url() + ")") != std::string::npos);
    }
    const auto elapsed = std::chrono::steady_clock::now() - started;
    CHECK(elapsed < std::chrono::seconds(4));
}

TEST_CASE("sss config validation follows Clevis") {
    TangServer a;
    const auto secret = bytes_of("x");
    CHECK_THROWS_AS(clevis_encrypt("sss", R"({"t":2,"pins":{"tang":[)" + tang_entry(a) + "]}}", secret), FormatError);
    CHECK_THROWS_AS(clevis_encrypt("sss", R"({"t":0,"pins":{"tang":[)" + tang_entry(a) + "]}}", secret), FormatError);
    CHECK_THROWS_AS(clevis_encrypt("sss", R"({"t":1})", secret), FormatError);
    CHECK_THROWS_AS(clevis_encrypt("sss", R"({"t":1,"pins":{"tang":["x"]}})", secret), FormatError);
    CHECK_THROWS_AS(clevis_encrypt("sss", R"({"t":1,"pins":{"nope":[{}]}})", secret), FormatError);
    // "t" defaults to 1 and a single config may stand without an array, as in Clevis.
    const std::string jwe = clevis_encrypt("sss", R"({"pins":{"tang":)" + tang_entry(a) + "}}", secret);
    CHECK(decrypt_to_string(jwe) == "x");
}

TEST_CASE("nested sss: an sss child inside sss, both ways with stock clevis") {
    TangServer a, b, c;
    // 2 of { tang c, sss(1 of { tang a, tang b }) }
    const std::string config = R"({"t":2,"pins":{"tang":[)" + tang_entry(c) + R"(],"sss":)" + sss_config(1, {&a, &b}) + "}}";
    const std::string ours = clevis_encrypt("sss", config, bytes_of("nested"));
    const std::string stock = run_ok({"clevis", "encrypt", "sss", config, "-y"}, "nested-stock");

    CHECK(decrypt_to_string(ours) == "nested");
    CHECK(run_ok({"clevis", "decrypt"}, ours) == "nested");
    CHECK(decrypt_to_string(stock) == "nested-stock");

    a.stop();  // the inner sss still has b
    CHECK(decrypt_to_string(ours) == "nested");
    CHECK(decrypt_to_string(stock) == "nested-stock");
    b.stop();  // the inner sss fails, so the outer has only c
    try {
        decrypt_to_string(ours);
        FAIL("decrypt succeeded without the nested share");
    } catch (const TangError& e) {
        const std::string message = e.what();
        INFO(message);
        CHECK(message.find("(sss 1 of 2)") != std::string::npos);
        CHECK(message.find(a.url()) != std::string::npos);
        CHECK(message.find(b.url()) != std::string::npos);
    }
}

TEST_CASE("stock clevis interop, raw JWE: clevis encrypt sss -> luksforge, luksforge -> clevis decrypt") {
    TangServer a, b, c;
    const std::string config = sss_config(2, {&a, &b, &c});
    const std::string stock = run_ok({"clevis", "encrypt", "sss", config, "-y"}, "from clevis");
    const std::string ours = clevis_encrypt("sss", config, bytes_of("from luksforge"));
    CHECK(decrypt_to_string(stock) == "from clevis");
    CHECK(run_ok({"clevis", "decrypt"}, ours) == "from luksforge");
    c.stop();
    CHECK(decrypt_to_string(stock) == "from clevis");
    CHECK(run_ok({"clevis", "decrypt"}, ours) == "from luksforge");
}

TEST_CASE("tampered sss JWE: a changed share or ciphertext is a clear AuthError") {
    TangServer a, b, c;
    const std::string jwe = clevis_encrypt("sss", sss_config(2, {&a, &b, &c}), bytes_of("integrity"));
    auto parts = split_dots(jwe);

    SUBCASE("a child JWE's ciphertext changed inside the protected header") {
        std::string header = b64u_decode(parts[0]);
        // Each child is a compact JWE; change one character of the first child's ciphertext part.
        const std::size_t child = header.find("\"jwe\":[\"") + 8;
        std::size_t dot = child;
        for (int i = 0; i < 3; ++i) dot = header.find('.', dot) + 1;
        header[dot + 2] = header[dot + 2] == 'A' ? 'B' : 'A';
        parts[0] = b64u_encode(header);
    }
    SUBCASE("the outer ciphertext changed") {
        parts[3][0] = parts[3][0] == 'A' ? 'B' : 'A';
    }
    SUBCASE("the outer tag changed") {
        parts[4][1] = parts[4][1] == 'A' ? 'B' : 'A';
    }
    const std::string tampered = parts[0] + "." + parts[1] + "." + parts[2] + "." + parts[3] + "." + parts[4];
    try {
        decrypt_to_string(tampered);
        FAIL("a tampered JWE decrypted");
    } catch (const AuthError& e) {
        INFO(e.what());
        CHECK(std::string(e.what()).find("sss") != std::string::npos);
    }
}

TEST_CASE("sss header with a wrong share length or threshold is refused") {
    TangServer a, b;
    const std::string jwe = clevis_encrypt("sss", sss_config(2, {&a, &b}), bytes_of("z"));
    auto parts = split_dots(jwe);
    std::string header = b64u_decode(parts[0]);
    const auto t = header.find(R"("t":2)");
    REQUIRE(t != std::string::npos);
    header.replace(t, 5, R"("t":3)");
    const std::string bad = b64u_encode(header) + "." + parts[1] + "." + parts[2] + "." + parts[3] + "." + parts[4];
    CHECK_THROWS_AS(decrypt_to_string(bad), FormatError);
}

TEST_CASE("sss header naming more children than luksforge accepts is refused before any is contacted") {
    std::string children;
    for (int i = 0; i < 300; ++i) children += std::string(i ? "," : "") + "\"e30..AAAA.AAAA.AAAA\"";
    const std::string header = R"({"alg":"dir","enc":"A256GCM","clevis":{"pin":"sss","sss":{"t":1,"p":")" +
                               std::string(43, 'A') + R"(","jwe":[)" + children + "]}}}";
    const std::string jwe = b64u_encode(header) + "..AAAAAAAAAAAAAAAA.AAAA.AAAAAAAAAAAAAAAAAAAAAA";
    try {
        decrypt_to_string(jwe);
        FAIL("an sss JWE with 300 children was accepted");
    } catch (const FormatError& e) {
        CHECK(std::string(e.what()).find("300 shares") != std::string::npos);
    }
}

// ---- LUKS2 interop -----------------------------------------------------------------------------------------------

namespace {

struct PreparedImage {
    TempDir dir;
    std::filesystem::path image = dir / "disk.img";
    std::filesystem::path keyfile = dir / "pass";
    PreparedImage() {
        make_sparse_file(image, 32 * kMiB);
        write_file(keyfile, "build passphrase");
        run_ok({"cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
                "--pbkdf-force-iterations", "1000", "--key-file", keyfile.string(), image.string()});
    }
};

// `clevis luks pass` output must open `slot` in cryptsetup itself.
void check_stock_pass_opens(const std::filesystem::path& image, int slot) {
    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.string(), "-s", std::to_string(slot)});
    INFO(pass.err);
    REQUIRE(pass.exit_code == 0);
    REQUIRE(pass.out.size() > 20);
    const RunResult open = run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot),
                                "--key-file", "-", image.string()},
                               pass.out);
    INFO(open.err);
    CHECK(open.exit_code == 0);
}

}  // namespace

TEST_CASE("LUKS interop: clevis luks bind sss, then luksforge pass / unlock") {
    TangServer a, b, c;
    PreparedImage prepared;
    const std::string config = sss_config(2, {&a, &b, &c});
    run_ok({"clevis", "luks", "bind", "-y", "-d", prepared.image.string(), "-k", prepared.keyfile.string(), "sss",
            config});
    b.stop();  // two of three are enough

    const RunResult pass = run_cli({"pass", prepared.image.string()});
    INFO(pass.err);
    REQUIRE(pass.exit_code == 0);
    const RunResult open = run({"cryptsetup", "open", "--test-passphrase", "--key-slot", "1", "--key-file", "-",
                                prepared.image.string()},
                               pass.out);
    CHECK(open.exit_code == 0);

    Volume volume = Volume::open(prepared.image, Volume::Access::read_only);
    const clevis::Unlocked unlocked = clevis::unlock(volume);
    CHECK(unlocked.keyslot == 1);
    CHECK(volume.test_passphrase(unlocked.passphrase.view(), 1) == 1);

    c.stop();
    const RunResult down = run_cli({"unlock", prepared.image.string(), "--test"});
    CHECK(down.exit_code != 0);
    INFO(down.err);
    CHECK(down.err.find("child 1 (tang " + b.url() + "): ") != std::string::npos);
    CHECK(down.err.find("child 2 (tang " + c.url() + "): ") != std::string::npos);
    // The live server is not blamed: at most it was abandoned once the threshold became unreachable.
    const auto live = down.err.find("child 0 (tang " + a.url() + "): ");
    if (live != std::string::npos) CHECK(down.err.substr(live).rfind("child 0 (tang " + a.url() + "): abandoned", 0) == 0);
}

TEST_CASE("LUKS interop: luksforge bind sss (CLI contract), then clevis luks pass") {
    TangServer a, b, c;
    PreparedImage prepared;
    const std::string config = sss_config(2, {&a, &b, &c});
    const RunResult bind =
        run_cli({"bind", prepared.image.string(), "sss", config, "--passphrase-file", prepared.keyfile.string()});
    INFO(bind.err);
    REQUIRE(bind.exit_code == 0);

    Volume volume = Volume::open(prepared.image, Volume::Access::read_only);
    const auto tokens = volume.tokens();
    REQUIRE(tokens.size() == 1);
    CHECK(tokens[0].type == "clevis");
    REQUIRE(tokens[0].keyslots.size() == 1);
    const int slot = tokens[0].keyslots[0];

    a.stop();
    check_stock_pass_opens(prepared.image, slot);
    const std::string list = run_ok({"clevis", "luks", "list", "-d", prepared.image.string()});
    CHECK(list.find("sss") != std::string::npos);
    CHECK(list.find(b.url()) != std::string::npos);
}
