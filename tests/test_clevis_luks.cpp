// Clevis LUKS2 bindings against a real Tang, stock `clevis luks`, `cryptsetup` and `jose`: bind/pass/list/unlock
// both ways, key rotation and regen, and bad inputs that must fail clearly without changing the header.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "luks_image.hpp"
#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

#include <fcntl.h>
#include <unistd.h>

#include <jansson.h>

#include <string>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;
const std::string kPass = "build passphrase for the tests";

struct Image : PassphraseImage {
    Image() : PassphraseImage(kPass) {}
    // The header's content as luksDump shows it, without the epoch (a rolled-back write bumps it).
    std::string dump() const {
        std::string out = run_ok({"cryptsetup", "luksDump", path.string()});
        const std::size_t epoch = out.find("Epoch:");
        if (epoch != std::string::npos) out.erase(epoch, out.find('\n', epoch) - epoch);
        return out;
    }
};

std::string pinned(const TangServer& tang) {
    return R"({"url":")" + tang.url() + R"(","thp":")" + tang.thumbprint() + R"("})";
}

std::string json_get(const std::string& json, const std::vector<std::string>& path) {
    json_error_t error;
    json_t* root = json_loads(json.c_str(), 0, &error);
    REQUIRE_MESSAGE(root != nullptr, json);
    json_t* v = root;
    for (const auto& key : path) v = json_is_array(v) ? json_array_get(v, std::stoul(key)) : json_object_get(v, key.c_str());
    std::string result;
    if (json_is_string(v)) {
        result = json_string_value(v);
    } else if (v) {
        char* text = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        result = text;
        free(text);
    }
    json_decref(root);
    return result;
}

// Bind through the CLI; returns the new keyslot.
int cli_bind(const Image& image, const std::string& config, const std::vector<std::string>& extra = {}) {
    std::vector<std::string> args = {"bind", image.path.string(), "tang", config, "--passphrase-file",
                                     image.pass_file.string(), "--json"};
    args.insert(args.end(), extra.begin(), extra.end());
    const RunResult r = run_cli(args);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    CHECK(json_get(r.out, {"verified"}) == "true");
    return std::stoi(json_get(r.out, {"keyslot"}));
}

bool cryptsetup_accepts(const Image& image, int slot, const std::string& passphrase) {
    return run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot), image.path.string(),
                "--key-file", "-"},
               passphrase)
               .exit_code == 0;
}

std::string token_of_slot(const Image& image, int slot) {
    const Volume volume = Volume::open(image.path, Volume::Access::read_only);
    for (const Token& t : volume.tokens())
        if (t.type == "clevis" && t.keyslots == std::vector<int>{slot}) return t.json;
    return {};
}

}  // namespace

TEST_CASE("luksforge bind, then stock clevis luks pass/list and cryptsetup accept it") {
    TangServer tang;
    Image image;
    const int slot = cli_bind(image, pinned(tang));
    CHECK(slot == 1);

    // Clevis's token layout exactly.
    const std::string token = token_of_slot(image, slot);
    REQUIRE_FALSE(token.empty());
    CHECK(json_get(token, {"type"}) == "clevis");
    CHECK(json_get(token, {"keyslots"}) == R"(["1"])");
    CHECK(json_get(token, {"jwe", "encrypted_key"}).empty());
    CHECK(token.find(R"("encrypted_key":"")") != std::string::npos);  // present, empty (udisks2 needs it)

    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)});
    REQUIRE_MESSAGE(pass.exit_code == 0, pass.err);
    CHECK(pass.out.size() == 54);  // base64url of 40 random bytes
    CHECK(cryptsetup_accepts(image, slot, pass.out));
    CHECK_FALSE(cryptsetup_accepts(image, 0, pass.out));

    // The keyslot is cheap pbkdf2 at 1000 iterations.
    const Volume volume = Volume::open(image.path, Volume::Access::read_only);
    const auto keyslot = volume.keyslot(slot);
    REQUIRE(keyslot);
    CHECK(keyslot->pbkdf.type == Pbkdf::Type::pbkdf2);
    CHECK(keyslot->pbkdf.iterations == 1000);

    // luksforge pass gives the same passphrase; list matches `clevis luks list` byte for byte.
    CHECK(run_cli({"pass", image.path.string(), "--slot", std::to_string(slot)}).out == pass.out);
    const RunResult stock_list = run({"clevis", "luks", "list", "-d", image.path.string()});
    CHECK(stock_list.exit_code == 0);
    CHECK(stock_list.out == "1: tang '{\"url\":\"" + tang.url() + "\"}'\n");
    CHECK(run_cli({"list", image.path.string()}).out == stock_list.out);
    CHECK(json_get(run_cli({"list", image.path.string(), "--json"}).out, {"0", "config", "url"}) == tang.url());

    // unlock --test; --key-fd writes the passphrase to a descriptor.
    CHECK(run_cli({"unlock", image.path.string(), "--test"}).exit_code == 0);
    TempDir out;
    const auto key_file = out / "key";
    const int fd = ::open(key_file.c_str(), O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    const RunResult by_fd = run_cli({"unlock", image.path.string(), "--key-fd", std::to_string(fd)}, {}, {fd});
    ::close(fd);
    CHECK_MESSAGE(by_fd.exit_code == 0, by_fd.err);
    CHECK(read_file_bytes(key_file) == pass.out);
}

TEST_CASE("stock clevis luks bind (-y, -k keyfile), then luksforge unlock and pass") {
    TangServer tang;
    Image image;
    const RunResult bound =
        run({"clevis", "luks", "bind", "-y", "-d", image.path.string(), "-k", image.pass_file.string(), "-s", "3",
             "tang", R"({"url":")" + tang.url() + R"("})"});
    REQUIRE_MESSAGE(bound.exit_code == 0, bound.err);
    CHECK(run_cli({"unlock", image.path.string(), "--test"}).exit_code == 0);
    const RunResult ours = run_cli({"pass", image.path.string(), "--slot", "3"});
    REQUIRE_MESSAGE(ours.exit_code == 0, ours.err);
    CHECK(ours.out == run_ok({"clevis", "luks", "pass", "-d", image.path.string(), "-s", "3"}));
    CHECK(cryptsetup_accepts(image, 3, ours.out));
    CHECK(run_cli({"list", image.path.string()}).out == run_ok({"clevis", "luks", "list", "-d", image.path.string()}));

    // The library API returns token, keyslot and passphrase.
    const Volume volume = Volume::open(image.path, Volume::Access::read_only);
    const clevis::Unlocked unlocked = clevis::unlock(volume);
    CHECK(unlocked.keyslot == 3);
    CHECK(unlocked.passphrase.view() == ours.out);
}

TEST_CASE("bind with the volume key right after format; unbind; the last keyslot is protected") {
    TangServer tang;
    TempDir dir;
    const auto path = dir / "fresh.img";
    make_sparse_file(path, 32 * kMiB);
    FormatOptions options;
    options.pbkdf = Pbkdf::pbkdf2_fast();
    Volume volume = Volume::format(path, options);
    const clevis::BindResult result = clevis::bind_with_volume_key(volume, "tang", pinned(tang));
    CHECK(result.verification == clevis::Verification::verified);
    CHECK(result.keyslot == 0);
    CHECK(clevis::unlock(volume).keyslot == 0);
    // The only keyslot: unbind refuses without force, and nothing changes.
    const std::string before = read_file_bytes(path, 0, 16 * kMiB);
    CHECK_THROWS_AS(clevis::unbind(volume, 0), FormatError);
    CHECK(read_file_bytes(path, 0, 16 * kMiB) == before);
    CHECK_THROWS_AS(clevis::unbind(volume, 5), NotFoundError);

    volume.add_keyslot_by_volume_key(kPass, Pbkdf::pbkdf2_fast());
    clevis::unbind(volume, 0);
    CHECK(volume.tokens().empty());
    CHECK_FALSE(volume.keyslot(0));
    CHECK_THROWS_AS(clevis::unlock(volume), NotFoundError);
}

TEST_CASE("Tang key rotation: old binding still unlocks; regen re-makes it in place (same keyslot and token)") {
    TangServer tang;
    Image image;
    const int slot = cli_bind(image, pinned(tang));
    const std::string old_kid = json_get(
        run_ok({"jose", "b64", "dec", "-i-"}, json_get(token_of_slot(image, slot), {"jwe", "protected"})), {"kid"});
    const std::string old_pass = run_ok({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)});
    tang.rotate();
    CHECK(run_cli({"unlock", image.path.string(), "--test"}).exit_code == 0);
    CHECK(run({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)}).exit_code == 0);

    const RunResult regen = run_cli({"regen", image.path.string(), "--slot", std::to_string(slot), "--json"});
    REQUIRE_MESSAGE(regen.exit_code == 0, regen.err);
    CHECK(json_get(regen.out, {"new", "keyslot"}) == std::to_string(slot));
    CHECK(json_get(regen.out, {"new", "token"}) == "0");
    CHECK(json_get(regen.out, {"new", "verified"}) == "true");
    CHECK(json_get(regen.out, {"resumed"}) == "false");
    const std::string new_token = token_of_slot(image, slot);
    REQUIRE_FALSE(new_token.empty());
    const std::string new_header = run_ok({"jose", "b64", "dec", "-i-"}, json_get(new_token, {"jwe", "protected"}));
    const std::string new_kid = json_get(new_header, {"kid"});
    CHECK(new_kid != old_kid);
    // The new kid is the current (advertised) exchange key.
    CHECK(std::filesystem::exists(tang.key_dir() / (new_kid + ".jwk")));
    CHECK(std::filesystem::exists(tang.key_dir() / ("." + old_kid + ".jwk")));
    const std::string pass = run_ok({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)});
    CHECK(pass != old_pass);
    CHECK(cryptsetup_accepts(image, slot, pass));
    CHECK_FALSE(cryptsetup_accepts(image, slot, old_pass));
    CHECK(run_cli({"list", image.path.string()}).out ==
          std::to_string(slot) + ": tang '{\"url\":\"" + tang.url() + "\"}'\n");
    const Volume volume = Volume::open(image.path, Volume::Access::read_only);
    CHECK(volume.keyslots().size() == 2);  // the build slot and the binding: no temporary slot left
    CHECK(volume.tokens().size() == 1);    // no regen record left
}

TEST_CASE("the server down after the advertisement: bind fails and rolls back, unless --no-verify") {
    TangServer tang;
    Image image;
    const std::string config = R"({"url":")" + tang.url() + R"(","adv":)" + tang.advertisement() + "}";
    tang.stop();
    const std::string before = image.dump();
    const RunResult r = run_cli({"bind", image.path.string(), "tang", config, "--passphrase-file",
                                 image.pass_file.string(), "--json", "--timeout", "1000"});
    CHECK(r.exit_code == 6);
    CHECK_MESSAGE(r.err.find("binding removed again") != std::string::npos, r.err);
    CHECK_MESSAGE(r.err.find("--no-verify") != std::string::npos, r.err);
    CHECK(image.dump() == before);
    // Explicitly skipping the proof keeps the binding, plainly reported as NOT verified.
    const RunResult skipped = run_cli({"bind", image.path.string(), "tang", config, "--passphrase-file",
                                       image.pass_file.string(), "--json", "--no-verify"});
    REQUIRE_MESSAGE(skipped.exit_code == 0, skipped.err);
    CHECK(json_get(skipped.out, {"verified"}) == "false");
    CHECK(json_get(skipped.out, {"verification"}) == "skipped");
    CHECK(skipped.err.find("NOT verified") != std::string::npos);
    CHECK(run_cli({"unlock", image.path.string(), "--test", "--timeout", "1000"}).exit_code == 6);
    tang.start();
    CHECK(run_cli({"unlock", image.path.string(), "--test"}).exit_code == 0);
}

TEST_CASE("a server whose /rec fails or stalls after serving the advertisement: bind rolls back") {
    TangServer tang;
    Image image;
    // The advertisement comes pinned from the real server; recovery goes to a server that stalls, via a
    // config whose url is the stalling one and whose adv is the real server's (trusted offline).
    BadServer stall(200, "{}", 5.0);
    BadServer refuse(500, "");
    const std::string before = image.dump();
    for (const BadServer* bad : {&stall, &refuse}) {
        const std::string config = R"({"url":")" + bad->url() + R"(","adv":)" + tang.advertisement() + "}";
        const RunResult r = run_cli({"bind", image.path.string(), "tang", config, "--passphrase-file",
                                     image.pass_file.string(), "--timeout", "1500"});
        CHECK(r.exit_code == 6);
        CHECK_MESSAGE(r.err.find("binding removed again") != std::string::npos, r.err);
        CHECK(image.dump() == before);
    }
}

TEST_CASE("bad inputs: each a clear error, the header bytes unchanged") {
    TangServer tang;
    Image image;
    const std::string before = image.header();
    auto bind_fails = [&](const std::string& pin, const std::string& config, const std::string& expected,
                          std::vector<std::string> extra = {}) {
        std::vector<std::string> args = {"bind", image.path.string(), pin, config, "--passphrase-file",
                                         image.pass_file.string(), "--timeout", "2500"};
        args.insert(args.end(), extra.begin(), extra.end());
        const RunResult r = run_cli(args);
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find(expected) != std::string::npos, r.err);
        CHECK(r.err.find('\n') == r.err.size() - 1);  // one line
        CHECK(image.header() == before);
        return r.exit_code;
    };
    auto cfg = [](const std::string& url) { return R"({"url":")" + url + R"(","thp":"x"})"; };

    SUBCASE("Tang down") {
        const std::string config = pinned(tang);
        tang.stop();
        CHECK(bind_fails("tang", config, "unreachable") == 6);
    }
    SUBCASE("too slow") {
        BadServer slow(200, "{}", 5.0);
        bind_fails("tang", cfg(slow.url()), "timed out");
    }
    SUBCASE("HTTP 404") {
        BadServer missing(404, "");
        bind_fails("tang", cfg(missing.url()), "HTTP 404");
    }
    SUBCASE("garbage advertisement") {
        BadServer garbage(200, "<html>nope</html>");
        bind_fails("tang", cfg(garbage.url()), "malformed advertisement");
    }
    SUBCASE("unsigned advertisement") {
        const std::string payload = json_get(tang.advertisement(), {"payload"});
        BadServer unsigned_adv(200, R"({"payload":")" + payload + R"(","signatures":[]})");
        bind_fails("tang", cfg(unsigned_adv.url()), "unsigned");
    }
    SUBCASE("wrong thumbprint") {
        bind_fails("tang", R"({"url":")" + tang.url() + R"(","thp":"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"})",
                   "HTTP 404");
        TangServer other;
        bind_fails("tang",
                   R"({"url":")" + tang.url() + R"(","thp":")" + other.thumbprint() + R"(","adv":)" +
                       tang.advertisement() + "}",
                   "thumbprint mismatch");
    }
    SUBCASE("untrusted without explicit trust-on-first-use") {
        bind_fails("tang", R"({"url":")" + tang.url() + R"("})", tang.thumbprint());
    }
    SUBCASE("wrong existing passphrase") {
        write_file(image.pass_file, "wrong");
        CHECK(bind_fails("tang", pinned(tang), "passphrase") == 3);
    }
    SUBCASE("unknown pin and malformed config") {
        CHECK(bind_fails("tpm9", "{}", "unknown pin") == 7);
        CHECK(bind_fails("tang", "{not json", "not valid JSON") == 7);
    }
    SUBCASE("keyslot in use") {
        bind_fails("tang", pinned(tang), "already in use", {"--slot", "0"});
    }
    SUBCASE("token would not fit the LUKS2 metadata") {
        // Fill the 16 KiB metadata area with a large foreign token, leaving too little room for ours.
        {
            Volume volume = Volume::open(image.path);
            volume.set_token(R"({"type":"filler","keyslots":[],"data":")" + std::string(9800, 'x') + R"("})");
        }
        const std::string filled = image.header();
        const RunResult r = run_cli({"bind", image.path.string(), "tang", pinned(tang), "--passphrase-file",
                                     image.pass_file.string()});
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find("do not fit") != std::string::npos, r.err);
        CHECK(image.header() == filled);
    }
}

TEST_CASE("tampered token and a token whose keyslot is gone: clear unlock errors, nothing changed") {
    TangServer tang;
    Image image;
    const int slot = cli_bind(image, pinned(tang));
    SUBCASE("tampered ciphertext") {
        std::string token = token_of_slot(image, slot);
        const std::string ciphertext = json_get(token, {"jwe", "ciphertext"});
        std::string flipped = ciphertext;
        flipped[0] = flipped[0] == 'A' ? 'B' : 'A';
        token.replace(token.find(ciphertext), ciphertext.size(), flipped);
        {
            Volume volume = Volume::open(image.path);
            volume.remove_token(0);
            CHECK(volume.set_token(token) == 0);
        }
        const std::string before = image.header();
        const RunResult r = run_cli({"unlock", image.path.string(), "--test"});
        CHECK(r.exit_code == 3);
        CHECK_MESSAGE(r.err.find("token 0") != std::string::npos, r.err);
        CHECK_MESSAGE(r.err.find("does not decrypt") != std::string::npos, r.err);
        CHECK(run_cli({"pass", image.path.string()}).out.empty());
        CHECK(run({"clevis", "luks", "pass", "-d", image.path.string(), "-s", std::to_string(slot)}).exit_code != 0);
        CHECK(image.header() == before);
    }
    SUBCASE("keyslot removed behind luksforge's back") {
        REQUIRE(run({"cryptsetup", "luksKillSlot", "-q", image.path.string(), std::to_string(slot)}).exit_code == 0);
        const std::string before = image.header();
        const RunResult r = run_cli({"unlock", image.path.string(), "--test"});
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find("names no keyslot") != std::string::npos, r.err);
        CHECK(image.header() == before);
    }
    SUBCASE("Tang down at unlock") {
        tang.stop();
        const RunResult r = run_cli({"unlock", image.path.string(), "--test", "--timeout", "700"});
        CHECK(r.exit_code == 6);
        CHECK_MESSAGE(r.err.find("unreachable") != std::string::npos, r.err);
    }
}

TEST_CASE("activate needs device-mapper: a clear error here") {
    TangServer tang;
    Image image;
    cli_bind(image, pinned(tang));
    const RunResult r = run_cli({"unlock", image.path.string(), "--name", "luksforge-test"});
    const bool dm = run({"grep", "-q", "device-mapper", "/proc/misc"}).exit_code == 0;
    if (dm) {
        MESSAGE("device-mapper present: activation result " << r.exit_code);
        if (r.exit_code == 0) run({"cryptsetup", "close", "luksforge-test"});
    } else {
        CHECK(r.exit_code != 0);
        CHECK_MESSAGE(r.err.find("device-mapper") != std::string::npos, r.err);
    }
}

TEST_CASE("sss bindings: list matches clevis luks list (nested sss too) both ways, and regen re-makes them") {
    TangServer a;
    TangServer b;
    Image image;
    const std::string config = R"({"t":2,"pins":{"tang":[{"url":")" + a.url() + R"(","thp":")" + a.thumbprint() +
                               R"("},{"url":")" + b.url() + R"(","thp":")" + b.thumbprint() + R"("}]}})";
    const RunResult ours = run_cli({"bind", image.path.string(), "sss", config, "--passphrase-file",
                                    image.pass_file.string()});
    REQUIRE_MESSAGE(ours.exit_code == 0, ours.err);
    const std::string nested = R"({"t":1,"pins":{"tang":[{"url":")" + a.url() + R"("}],"sss":{"t":1,"pins":{"tang":[{"url":")" +
                               b.url() + R"("}]}}}})";
    const RunResult theirs = run({"clevis", "luks", "bind", "-y", "-d", image.path.string(), "-k",
                                  image.pass_file.string(), "-s", "4", "sss", nested});
    REQUIRE_MESSAGE(theirs.exit_code == 0, theirs.err);
    const std::string stock = run_ok({"clevis", "luks", "list", "-d", image.path.string()});
    CHECK(stock == "1: sss '{\"t\":2,\"pins\":{\"tang\":[{\"url\":\"" + a.url() + "\"},{\"url\":\"" + b.url() +
                       "\"}]}}'\n4: sss '" + nested + "'\n");
    CHECK(run_cli({"list", image.path.string()}).out == stock);
    CHECK(run_cli({"unlock", image.path.string(), "--slot", "4", "--test"}).exit_code == 0);
    const std::string pass1 = run_ok({"clevis", "luks", "pass", "-d", image.path.string(), "-s", "1"});
    CHECK(cryptsetup_accepts(image, 1, pass1));

    // regen re-makes the binding in place: keyslot 1 keeps it, token 0 keeps its id.
    a.rotate();
    const RunResult regen = run_cli({"regen", image.path.string(), "--slot", "1", "--json"});
    REQUIRE_MESSAGE(regen.exit_code == 0, regen.err);
    CHECK(json_get(regen.out, {"new", "keyslot"}) == "1");
    const std::string pass = run_ok({"clevis", "luks", "pass", "-d", image.path.string(), "-s", "1"});
    CHECK(pass != pass1);
    CHECK(cryptsetup_accepts(image, 1, pass));
    CHECK(run_cli({"list", image.path.string()}).out == stock);
}

TEST_CASE("bindings on a loop device work the same (stock clevis reads them through the device)") {
    TangServer tang;
    Image image;
    LoopDevice loop(image.path);
    const RunResult r = run_cli({"bind", loop.path().string(), "tang", pinned(tang), "--passphrase-file",
                                 image.pass_file.string(), "--json"});
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    const std::string slot = json_get(r.out, {"keyslot"});
    const std::string pass = run_ok({"clevis", "luks", "pass", "-d", loop.path().string(), "-s", slot});
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-slot", slot, loop.path().string(), "--key-file", "-"},
              pass)
              .exit_code == 0);
    CHECK(run_cli({"unlock", loop.path().string(), "--test"}).exit_code == 0);
    CHECK(run_cli({"list", loop.path().string()}).out ==
          run_ok({"clevis", "luks", "list", "-d", loop.path().string()}));
}
