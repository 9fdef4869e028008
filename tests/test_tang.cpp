// Tang client and tang pin against a real Tang (tangd via socat on loopback), stock `clevis` and `jose`, and
// scripted bad servers.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/error.hpp>
#include <luksforge/pin.hpp>
#include <luksforge/tang.hpp>

#include <jansson.h>

#include <chrono>
#include <string>

using namespace luksforge;
using namespace luksforge::test;

namespace {

std::span<const std::uint8_t> bytes_of(const std::string& s) {
    return {reinterpret_cast<const std::uint8_t*>(s.data()), s.size()};
}

std::string pinned_config(const TangServer& tang) {
    return R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
}

std::string decode_header(const std::string& jwe) {
    return run_ok({"jose", "b64", "dec", "-i-"}, jwe.substr(0, jwe.find('.')));
}

std::string json_get(const std::string& json, const std::vector<std::string>& path) {
    json_error_t error;
    json_t* root = json_loads(json.c_str(), 0, &error);
    REQUIRE(root != nullptr);
    json_t* v = root;
    for (const auto& key : path) v = json_object_get(v, key.c_str());
    std::string result;
    if (json_is_string(v)) result = json_string_value(v);
    else if (v) {
        char* text = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
        result = text;
        free(text);
    }
    json_decref(root);
    return result;
}

template <typename F>
std::string error_of(F&& f) {
    try {
        f();
    } catch (const std::exception& e) {
        return e.what();
    }
    return "(no error)";
}

const std::string secret = "a secret: 0123456789abcdefghijklmnopqrstuvwxyzABCDEF";

}  // namespace

TEST_CASE("advertisement from a real Tang: every signature verified, thumbprints as jose computes them") {
    TangServer tang;
    tang::Client client(tang.url());
    const tang::Advertisement adv = client.fetch_advertisement();
    CHECK(adv.signed_jws);
    REQUIRE(adv.signing_thumbprints.size() == 1);
    CHECK(adv.signing_thumbprints[0] == tang.thumbprint());
    CHECK(adv.has_signing_key(tang.thumbprint()));
    CHECK(adv.has_signing_key(tang.thumbprint_s1()));
    CHECK_FALSE(adv.has_signing_key("AAAA"));
    CHECK(adv.exchange_thumbprints.size() == 1);
    // /adv/{thp} with S1 works too (tangd accepts several hashes).
    CHECK(client.fetch_advertisement(tang.thumbprint_s1()).signing_thumbprints == adv.signing_thumbprints);
    CHECK(client.native_handle() != nullptr);
}

TEST_CASE("tang pin JWE interoperates with stock clevis both ways and has Clevis's exact header") {
    TangServer tang;
    const std::string jwe = clevis_encrypt("tang", pinned_config(tang), bytes_of(secret));

    SUBCASE("compact layout and header fields") {
        std::vector<std::string> parts;
        std::size_t start = 0;
        for (std::size_t dot; (dot = jwe.find('.', start)) != std::string::npos; start = dot + 1)
            parts.push_back(jwe.substr(start, dot - start));
        parts.push_back(jwe.substr(start));
        REQUIRE(parts.size() == 5);
        CHECK(parts[1].empty());          // direct key agreement: no encrypted key
        CHECK(parts[2].size() == 16);     // 12-byte IV
        CHECK(parts[4].size() == 22);     // 16-byte tag
        const std::string header = decode_header(jwe);
        CHECK(json_get(header, {"alg"}) == "ECDH-ES");
        CHECK(json_get(header, {"enc"}) == "A256GCM");
        CHECK(json_get(header, {"clevis", "pin"}) == "tang");
        CHECK(json_get(header, {"clevis", "tang", "url"}) == tang.url());
        CHECK(json_get(header, {"epk", "crv"}) == "P-521");
        CHECK(json_get(header, {"epk", "d"}).empty());
        // adv is the JWK set (payload), not the JWS.
        CHECK(json_get(header, {"clevis", "tang", "adv", "payload"}).empty());
        const std::string adv_keys = json_get(header, {"clevis", "tang", "adv"});
        CHECK(adv_keys.find("\"keys\"") != std::string::npos);
        // kid is the S256 thumbprint of the advertised exchange key.
        const std::string kid = json_get(header, {"kid"});
        const std::string exchange_keys = run_ok({"jose", "jwk", "use", "-i-", "-r", "-u", "deriveKey", "-o-"},
                                                 adv_keys);
        CHECK(run_ok({"jose", "jwk", "thp", "-i-"}, exchange_keys).find(kid) != std::string::npos);
    }
    SUBCASE("stock clevis decrypt reads luksforge's JWE") {
        CHECK(run_ok({"clevis", "decrypt"}, jwe) == secret);
    }
    SUBCASE("luksforge decrypts stock clevis encrypt tang") {
        const std::string theirs = run_ok({"clevis", "encrypt", "tang", pinned_config(tang)}, secret);
        SecretBuffer plain = clevis_decrypt(theirs);
        CHECK(plain.view() == secret);
    }
    SUBCASE("luksforge round trip") {
        CHECK(clevis_decrypt(jwe).view() == secret);
    }
}

TEST_CASE("trust: pinned S256 or S1 thumbprint, offline advertisement, explicit trust-on-first-use only") {
    TangServer tang;
    SUBCASE("unpinned, no adv: refused, the error lists the signing thumbprint") {
        const std::string config = R"({"url":")" + tang.url() + R"("})";
        std::string message;
        try {
            clevis_encrypt("tang", config, bytes_of(secret));
        } catch (const TangError& e) {
            message = e.what();
        }
        CHECK(message.find("untrusted") != std::string::npos);
        CHECK(message.find(tang.thumbprint()) != std::string::npos);
        PinOptions tofu;
        tofu.trust_on_first_use = true;
        CHECK(clevis_decrypt(clevis_encrypt("tang", config, bytes_of(secret), tofu)).view() == secret);
    }
    SUBCASE("S1 thumbprint accepted") {
        const std::string config = R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint_s1() + R"("})";
        CHECK(clevis_decrypt(clevis_encrypt("tang", config, bytes_of(secret))).view() == secret);
    }
    SUBCASE("wrong thumbprint: the server has no such key") {
        const std::string config = R"({"url":")" + tang.url() + R"(","thp":"WRONGthumbprintWRONGthumbprintWRONGthumbpr"})";
        const std::string message = error_of([&] { clevis_encrypt("tang", config, bytes_of(secret)); });
        CHECK(message.find("404") != std::string::npos);
    }
    SUBCASE("offline advertisement (JSON object and file), server down while encrypting") {
        const std::string adv = tang.advertisement();
        TempDir dir;
        write_file(dir / "adv.jws", adv);
        tang.stop();
        for (const std::string& config : {R"({"url":")" + tang.url() + R"(","adv":)" + adv + "}",
                                          R"({"url":")" + tang.url() + R"(","adv":")" + (dir / "adv.jws").string() +
                                              R"("})"}) {
            const std::string jwe = clevis_encrypt("tang", config, bytes_of(secret));
            CHECK_THROWS_AS(clevis_decrypt(jwe), TangError);
            tang.start();
            CHECK(clevis_decrypt(jwe).view() == secret);
            CHECK(run_ok({"clevis", "decrypt"}, jwe) == secret);
            tang.stop();
        }
    }
    SUBCASE("offline advertisement with a thp that did not sign it: thumbprint mismatch") {
        TangServer other;
        const std::string config = R"({"url":")" + tang.url() + R"(","thp":")" + other.thumbprint() +
                                   R"(","adv":)" + tang.advertisement() + "}";
        const std::string message = error_of([&] { clevis_encrypt("tang", config, bytes_of(secret)); });
        CHECK(message.find("thumbprint mismatch") != std::string::npos);
    }
    SUBCASE("advertisement whose signatures belong to another server's payload: bad signature") {
        TangServer other;
        const std::string ours = tang.advertisement();
        const std::string theirs = other.advertisement();
        // Our payload with the other server's signatures.
        // tangd serves a flattened JWS when it has one signing key.
        const std::string forged = R"({"payload":")" + json_get(ours, {"payload"}) + R"(","protected":")" +
                                   json_get(theirs, {"protected"}) + R"(","signature":")" +
                                   json_get(theirs, {"signature"}) + R"("})";
        const std::string message = error_of([&] { tang::parse_advertisement(forged); });
        CHECK(message.find("does not verify") != std::string::npos);
    }
}

TEST_CASE("clear errors from bad servers: down, slow, HTTP errors, garbage, unsigned, oversized, cancelled") {
    const std::string config_for = R"({"url":"URL","thp":"x"})";
    auto config = [](const std::string& url) { return R"({"url":")" + url + R"(","thp":"x"})"; };
    PinOptions quick;
    quick.network.connect_timeout_ms = 1000;
    quick.network.total_timeout_ms = 2500;  // roomy for a loaded 2-core machine; the slow server waits 5 s

    SUBCASE("Tang down: connection refused") {
        TangServer tang;
        const std::string url = tang.url();
        tang.stop();
        try {
            clevis_encrypt("tang", pinned_config(tang), bytes_of(secret), quick);
            FAIL("no error");
        } catch (const TangError& e) {
            CHECK(e.code().value() == ECONNREFUSED);
            CHECK(std::string(e.what()).find("unreachable") != std::string::npos);
            CHECK(std::string(e.what()).find(url) != std::string::npos);
        }
    }
    SUBCASE("too slow: total timeout") {
        BadServer slow(200, "{}", 5.0);
        const auto start = std::chrono::steady_clock::now();
        try {
            clevis_encrypt("tang", config(slow.url()), bytes_of(secret), quick);
            FAIL("no error");
        } catch (const TangError& e) {
            CHECK(e.code().value() == ETIMEDOUT);
            CHECK(std::string(e.what()).find("timed out") != std::string::npos);
        }
        CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(4));
    }
    SUBCASE("cancel flag aborts a transfer in flight") {
        BadServer slow(200, "{}", 5.0);
        PinOptions options;
        options.network.cancel = std::make_shared<std::atomic<bool>>(true);
        try {
            tang::Client(slow.url(), options.network).fetch_advertisement();
            FAIL("no error");
        } catch (const TangError& e) {
            CHECK(e.code().value() == ECANCELED);
        }
    }
    SUBCASE("HTTP 404") {
        BadServer missing(404, "");
        const std::string message = error_of([&] { clevis_encrypt("tang", config(missing.url()), bytes_of(secret)); });
        CHECK(message.find("HTTP 404") != std::string::npos);
    }
    SUBCASE("HTTP 500 and redirects are not followed") {
        BadServer broken(500, "");
        CHECK(error_of([&] { clevis_encrypt("tang", config(broken.url()), bytes_of(secret)); }).find("HTTP 500") !=
              std::string::npos);
        BadServer moved(302, "");
        CHECK(error_of([&] { clevis_encrypt("tang", config(moved.url()), bytes_of(secret)); }).find("redirect") !=
              std::string::npos);
    }
    SUBCASE("garbage advertisement") {
        BadServer garbage(200, "this is <html> not JSON");
        const std::string message = error_of([&] { clevis_encrypt("tang", config(garbage.url()), bytes_of(secret)); });
        CHECK(message.find("malformed advertisement") != std::string::npos);
    }
    SUBCASE("unsigned advertisement (JWS without signatures)") {
        TangServer tang;
        const std::string payload = json_get(tang.advertisement(), {"payload"});
        BadServer unsigned_adv(200, R"({"payload":")" + payload + R"(","signatures":[]})");
        const std::string message =
            error_of([&] { clevis_encrypt("tang", config(unsigned_adv.url()), bytes_of(secret)); });
        CHECK(message.find("unsigned") != std::string::npos);
    }
    SUBCASE("response-size cap") {
        BadServer big(200, std::string(5000, ' ') + "{}");
        NetworkOptions small;
        small.max_response_bytes = 1000;
        try {
            tang::Client(big.url(), small).fetch_advertisement();
            FAIL("no error");
        } catch (const TangError& e) {
            CHECK(e.code().value() == EMSGSIZE);
        }
    }
    SUBCASE("wrong curve in the recovery reply") {
        TangServer tang;
        const std::string jwe = clevis_encrypt("tang", pinned_config(tang), bytes_of(secret));
        // A server that answers /rec with a P-256 key while the JWE is P-521.
        const std::string p256 = run_ok({"jose", "jwk", "gen", "-i", R"({"alg":"ECMR","crv":"P-256"})"});
        const std::string pub = run_ok({"jose", "jwk", "pub", "-i-"}, p256);
        BadServer liar(200, pub);
        // Point the JWE's header at the liar: rewrite clevis.tang.url (the header is authenticated data, but
        // the reply's curve is checked before decryption is even tried).
        std::string header = decode_header(jwe);
        const std::size_t at = header.find(tang.url());
        REQUIRE(at != std::string::npos);
        header.replace(at, tang.url().size(), liar.url());
        std::string b64 = run_ok({"jose", "b64", "enc", "-I-"}, header);
        const std::string forged = b64 + jwe.substr(jwe.find('.'));
        const std::string message = error_of([&] { clevis_decrypt(forged); });
        CHECK(message.find("wrong curve") != std::string::npos);
    }
    SUBCASE("bad config") {
        CHECK_THROWS_AS(clevis_encrypt("tang", R"({"thp":"x"})", bytes_of(secret)), FormatError);
        CHECK_THROWS_AS(clevis_encrypt("tang", "not json", bytes_of(secret)), FormatError);
        CHECK_THROWS_AS(clevis_encrypt("tang", R"({"url":"ftp://x","thp":"x"})", bytes_of(secret)), FormatError);
        CHECK_THROWS_AS(clevis_encrypt("tpm9", R"({})", bytes_of(secret)), FormatError);
        CHECK_THROWS_AS(clevis_encrypt("tang", R"({"url":"http://127.0.0.1:1","adv":"/nonexistent/adv.jws"})",
                                       bytes_of(secret)),
                        NotFoundError);
    }
    (void)config_for;
}

TEST_CASE("tampered JWE is an AuthError; malformed JWE a FormatError") {
    TangServer tang;
    const std::string jwe = clevis_encrypt("tang", pinned_config(tang), bytes_of(secret));
    const std::size_t ct = jwe.find('.', jwe.find('.', jwe.find('.') + 1) + 1) + 1;  // start of ciphertext
    SUBCASE("ciphertext") {
        std::string bad = jwe;
        bad[ct] = bad[ct] == 'A' ? 'B' : 'A';
        CHECK_THROWS_AS(clevis_decrypt(bad), AuthError);
    }
    SUBCASE("tag") {
        std::string bad = jwe;
        bad[bad.size() - 2] = bad[bad.size() - 2] == 'A' ? 'B' : 'A';
        CHECK_THROWS_AS(clevis_decrypt(bad), AuthError);
    }
    SUBCASE("iv") {
        std::string bad = jwe;
        const std::size_t iv = jwe.find('.', jwe.find('.') + 1) + 1;
        bad[iv] = bad[iv] == 'A' ? 'B' : 'A';
        CHECK_THROWS_AS(clevis_decrypt(bad), AuthError);
    }
    SUBCASE("malformed") {
        CHECK_THROWS_AS(clevis_decrypt("abc.def"), FormatError);
        CHECK_THROWS_AS(clevis_decrypt("!!!!....."), FormatError);
    }
}

TEST_CASE("recovery after key rotation: hidden keys still answer /rec") {
    TangServer tang;
    const std::string jwe = clevis_encrypt("tang", pinned_config(tang), bytes_of(secret));
    const std::string old_thp = tang.thumbprint();
    tang.rotate();
    CHECK(tang.thumbprint() != old_thp);
    CHECK(clevis_decrypt(jwe).view() == secret);
    // tangd signs /adv/OLD_THP with the rotated-out key too. Pinning it like Clevis (payload keys only) fails
    // clearly; with the old advertisement's keys as extra trusted keys the chain old → new verifies.
    const std::string config = R"({"url":")" + tang.url() + R"(","thp":")" + old_thp + R"("})";
    CHECK(error_of([&] { clevis_encrypt("tang", config, bytes_of(secret)); }).find("rotated-out") !=
          std::string::npos);
    const std::string old_adv = json_get(decode_header(jwe), {"clevis", "tang", "adv"});
    const tang::Advertisement chained =
        tang::parse_advertisement(tang::Client(tang.url()).fetch_advertisement_text(old_thp), old_adv);
    CHECK(chained.has_signing_key(old_thp));
    CHECK(chained.has_signing_key(tang.thumbprint()));
    // The default advertisement is signed by the new key only.
    CHECK_FALSE(tang::Client(tang.url()).fetch_advertisement().has_signing_key(old_thp));
}
