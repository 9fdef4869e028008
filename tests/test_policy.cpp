// Deployment policy files: parsing, every check with its line number, `luksforge policy check`, and a policy
// naming seven Tang servers — refused before anything is written when the header cannot hold its token, bound
// and unlocked (also by stock Clevis) when `format --policy` reserved the metadata.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "tang_server.hpp"
#include "testutil.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>
#include <luksforge/policy.hpp>

#include <algorithm>
#include <memory>

using namespace luksforge;
using namespace luksforge::test;

namespace {

constexpr std::uint64_t kMiB = 1ull << 20;

// The problem reported for `line`, or an empty string.
std::string problem_at(const std::vector<PolicyProblem>& problems, std::size_t line) {
    for (const auto& problem : problems)
        if (problem.line == line) return problem.message;
    return {};
}

std::string tang_block(const TangServer& server, bool with_thp = true, const std::string& adv = {}) {
    std::string block = "[[tang]]\nurl = \"" + server.url() + "\"\n";
    if (with_thp) block += "thp = \"" + server.thumbprint() + "\"\n";
    if (!adv.empty()) block += "adv = \"" + adv + "\"\n";
    return block;
}

// n running Tang servers.
std::vector<std::unique_ptr<TangServer>> start_servers(int n) {
    std::vector<std::unique_ptr<TangServer>> servers;
    for (int i = 0; i < n; ++i) servers.push_back(std::make_unique<TangServer>());
    return servers;
}

void format_build_image(const std::filesystem::path& image, const std::filesystem::path& keyfile) {
    make_sparse_file(image, 32 * kMiB);
    write_file(keyfile, "build passphrase");
    run_ok({"cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--pbkdf", "pbkdf2",
            "--pbkdf-force-iterations", "1000", "--key-file", keyfile.string(), image.string()});
}

}  // namespace

TEST_CASE("a valid policy: three pinned servers make an sss 2-of-3 config; one server makes a tang config") {
    TangServer a, b, c;
    const std::string text = "# fleet policy\nthreshold = 2\nmax_instances_per_key = 3\n\n" + tang_block(a) +
                             tang_block(b) + tang_block(c) +
                             "[luks]\ncipher = \"aes-xts-plain64\"\nkey_bits = 512\n"
                             "[keyslot]\npbkdf = \"pbkdf2\"\niterations = 2000\n";
    const Policy policy = Policy::parse(text, "fleet.toml");
    const auto problems = policy.check();
    for (const auto& problem : problems) INFO(problem.to_string());
    CHECK(problems.empty());
    CHECK(policy.threshold == 2);
    CHECK(policy.max_instances_per_key == 3);
    REQUIRE(policy.servers.size() == 3);
    CHECK(policy.servers[1].url == b.url());
    CHECK(policy.keyslot_pbkdf.type == Pbkdf::Type::pbkdf2);
    CHECK(policy.keyslot_pbkdf.iterations == 2000);

    const Policy::Pin pin = policy.pin();
    CHECK(pin.name == "sss");
    CHECK(pin.config_json == R"({"t":2,"pins":{"tang":[{"url":")" + a.url() + R"(","thp":")" + a.thumbprint() +
                                 R"("},{"url":")" + b.url() + R"(","thp":")" + b.thumbprint() + R"("},{"url":")" +
                                 c.url() + R"(","thp":")" + c.thumbprint() + R"("}]}})");
    // The config is accepted by the pin and by stock clevis alike.
    const std::string secret = "policy secret";
    const std::string jwe = clevis_encrypt(pin.name, pin.config_json,
                                           {reinterpret_cast<const std::uint8_t*>(secret.data()), secret.size()},
                                           policy.pin_options());
    CHECK(run_ok({"clevis", "decrypt"}, jwe) == secret);

    const FormatOptions format = policy.format_options();
    CHECK(format.cipher == "aes");
    CHECK(format.cipher_mode == "xts-plain64");
    CHECK(format.volume_key_bytes == 64);
    CHECK(format.metadata_bytes == 0);  // three servers fit libcryptsetup's default 16 KiB

    const Policy single = Policy::parse(tang_block(a));
    CHECK(single.check().empty());
    CHECK(single.pin().name == "tang");
    CHECK(single.pin().config_json == R"({"url":")" + a.url() + R"(","thp":")" + a.thumbprint() + R"("})");
    CHECK(single.max_instances_per_key == 1);
    CHECK_FALSE(single.trust_on_first_use);

    // The CLI agrees.
    TempDir dir;
    write_file(dir / "fleet.toml", text);
    const RunResult cli = run_cli({"policy", "check", (dir / "fleet.toml").string()});
    INFO(cli.err);
    CHECK(cli.exit_code == 0);
    CHECK(cli.out.find("valid") != std::string::npos);
    const RunResult json = run_cli({"policy", "check", (dir / "fleet.toml").string(), "--json"});
    CHECK(json.exit_code == 0);
    CHECK(json.out.find(R"("valid":true)") != std::string::npos);
    CHECK(json.out.find(R"("pin":"sss")") != std::string::npos);
}

TEST_CASE("every policy error is reported with its line") {
    TangServer a;
    const std::string thp = a.thumbprint();
    // Line numbers matter: keep this text's layout in sync with the expectations below.
    const std::string text =
        "threshold = 3\n"                                  // 1: t > n (2 servers)
        "colour = \"blue\"\n"                              // 2: unknown key
        "trust_on_first_use = \"no\"\n"                    // 3: wrong type
        "[[tang]]\n"                                       // 4
        "url = \"http://127.0.0.1:1\"\n"                   // 5
        "thp = \"" + thp + "\"\n"                          // 6
        "[[tang]]\n"                                       // 7
        "url = \"http://127.0.0.1:1/\"\n"                  // 8: duplicate (trailing slash is the same URL)
        "thp = \"not-a-thumbprint!\"\n"                    // 9: bad thumbprint
        "adv = \"missing-adv.jws\"\n"                      // 10: missing adv file
        "port = 7500\n"                                    // 11: unknown key in [[tang]]
        "[luks]\n"                                         // 12
        "metadata_size = \"20KiB\"\n"                      // 13: not a LUKS2 metadata size
        "sector = 4096\n"                                  // 14: unknown key in [luks]
        "[keyslot]\n"                                      // 15
        "pbkdf = \"scrypt\"\n"                             // 16: unknown PBKDF
        "iterations = 10\n";                               // 17: below pbkdf2's minimum
    TempDir dir;
    write_file(dir / "bad.toml", text);
    const Policy policy = Policy::load(dir / "bad.toml");
    const auto problems = policy.check();
    for (const auto& problem : problems) INFO(problem.to_string());
    CHECK(problem_at(problems, 1).find("threshold = 3 is larger than the 2 Tang servers") != std::string::npos);
    CHECK(problem_at(problems, 2).find("unknown key colour") != std::string::npos);
    CHECK(problem_at(problems, 3).find("trust_on_first_use must be true or false") != std::string::npos);
    CHECK(problem_at(problems, 8).find("duplicate Tang url") != std::string::npos);
    CHECK(problem_at(problems, 8).find("line 5") != std::string::npos);
    CHECK(problem_at(problems, 9).find("not a thumbprint") != std::string::npos);
    CHECK(problem_at(problems, 10).find("missing-adv.jws does not exist") != std::string::npos);
    CHECK(problem_at(problems, 11).find("unknown key tang.port") != std::string::npos);
    CHECK(problem_at(problems, 13).find("not a LUKS2 metadata size") != std::string::npos);
    CHECK(problem_at(problems, 14).find("unknown key luks.sector") != std::string::npos);
    CHECK(problem_at(problems, 16).find("must be pbkdf2, argon2id or argon2i") != std::string::npos);
    CHECK(problem_at(problems, 17).find("at least 1000") != std::string::npos);
    CHECK(problems.size() == 11);
    for (std::size_t i = 1; i < problems.size(); ++i) CHECK(problems[i - 1].line <= problems[i].line);
    CHECK_THROWS_AS(policy.require_valid(), FormatError);

    // The CLI prints FILE:LINE: message for each and exits non-zero.
    const RunResult cli = run_cli({"policy", "check", (dir / "bad.toml").string()});
    CHECK(cli.exit_code == 7);
    // The report on stdout: one problem a line, in line order, each FILE:LINE: message.
    const std::string file = (dir / "bad.toml").string();
    CHECK(cli.out.rfind(file + ":1: threshold = 3", 0) == 0);
    CHECK(cli.out.find("\n" + file + ":9: tang.thp") != std::string::npos);
    CHECK(cli.out.find("\n" + file + ":17: keyslot.iterations") != std::string::npos);
    CHECK(std::count(cli.out.begin(), cli.out.end(), '\n') == 11);
    // And one error line on stderr that repeats them.
    CHECK(cli.err.find(file + " is not a valid policy (11 problems)") != std::string::npos);
    CHECK(cli.err.find(file + ":9: tang.thp") != std::string::npos);
    CHECK(std::count(cli.err.begin(), cli.err.end(), '\n') == 1);
    const RunResult json = run_cli({"policy", "check", (dir / "bad.toml").string(), "--json"});
    CHECK(json.exit_code == 7);
    CHECK(json.out.find(R"("valid":false)") != std::string::npos);
    CHECK(json.out.find(R"({"line":16,)") != std::string::npos);
}

TEST_CASE("more policy errors: t < 1, no servers, no trust anchor, TOML syntax, missing file") {
    const std::string url = "http://127.0.0.1:9";
    {
        const Policy policy = Policy::parse("threshold = 0\n[[tang]]\nurl = \"" + url + "\"\nthp = \"" +
                                            std::string(43, 'A') + "\"\n");
        CHECK(problem_at(policy.check(), 1).find("must be at least 1") != std::string::npos);
    }
    {
        const Policy policy = Policy::parse("threshold = 1\n");
        const auto problems = policy.check();
        REQUIRE(problems.size() == 1);
        CHECK(problems[0].message.find("no Tang servers") != std::string::npos);
    }
    {
        // Neither thp nor adv: refused unless trust_on_first_use is explicitly on.
        const Policy policy = Policy::parse("\n[[tang]]\nurl = \"" + url + "\"\n");
        CHECK(problem_at(policy.check(), 2).find("neither thp nor adv") != std::string::npos);
        const Policy tofu = Policy::parse("trust_on_first_use = true\n[[tang]]\nurl = \"" + url + "\"\n");
        CHECK(tofu.check().empty());
        CHECK(tofu.pin_options().trust_on_first_use);
    }
    {
        const Policy policy = Policy::parse("[[tang]]\nurl = \"tang.example\"\nthp = \"" + std::string(27, 'x') + "\"\n");
        CHECK(problem_at(policy.check(), 2).find("must be an http:// or https:// URL") != std::string::npos);
    }
    try {
        Policy::parse("threshold = 2\n[[tang]\nurl = 1\n", "syntax.toml");
        FAIL("a TOML syntax error was accepted");
    } catch (const PolicySyntaxError& e) {
        CHECK(e.problem.line == 2);
        CHECK(e.problem.to_string().rfind("syntax.toml:2: ", 0) == 0);
    }
    TempDir dir;
    write_file(dir / "syntax.toml", "threshold = = 2\n");
    const RunResult cli = run_cli({"policy", "check", (dir / "syntax.toml").string()});
    CHECK(cli.exit_code == 7);
    CHECK(cli.out.rfind((dir / "syntax.toml").string() + ":1: ", 0) == 0);
    CHECK(cli.err.find((dir / "syntax.toml").string() + ":1: ") != std::string::npos);
    CHECK_THROWS_AS(Policy::load(dir / "absent.toml"), NotFoundError);
}

TEST_CASE("offline advertisements: checked against the pinned thumbprint, token size measured exactly") {
    TangServer a, b;
    TempDir dir;
    write_file(dir / "a.jws", a.advertisement());
    write_file(dir / "b.jws", b.advertisement());
    // b's advertisement under a's thumbprint is a mismatch; relative adv paths are relative to the policy file.
    write_file(dir / "p.toml", "threshold = 2\n" + tang_block(a, true, "a.jws") + tang_block(b, false, "b.jws") +
                                   "[[tang]]\nurl = \"http://127.0.0.1:2\"\nthp = \"" + a.thumbprint() +
                                   "\"\nadv = \"b.jws\"\n");
    const Policy mismatched = Policy::load(dir / "p.toml");
    const auto problems = mismatched.check();
    CHECK(problems.size() == 1);
    CHECK(problem_at(problems, 12).find("is not signed by the pinned thp") != std::string::npos);

    write_file(dir / "p.toml", "threshold = 2\n" + tang_block(a, true, "a.jws") + tang_block(b, false, "b.jws"));
    const Policy policy = Policy::load(dir / "p.toml");
    CHECK(policy.check().empty());
    CHECK(policy.servers[0].adv == dir.path() / "a.jws");
    const TokenEstimate estimate = policy.estimate_token();
    CHECK(estimate.measured);
    // Two tang children inside an sss JWE: about 2 × 1.8 KB.
    CHECK(estimate.token_bytes > 3000);
    CHECK(estimate.token_bytes < 4500);
    // Offline encryption works without the servers; unlocking needs them.
    a.stop();
    b.stop();
    CHECK(policy.estimate_token().measured);
}

TEST_CASE("seven Tang servers and 16 KiB of metadata: refused with a clear message, nothing written") {
    auto servers = start_servers(7);
    TempDir dir;
    std::string blocks;
    for (const auto& server : servers) blocks += tang_block(*server);

    // An explicit metadata size that cannot hold the token is a policy error on its line.
    write_file(dir / "small.toml", "threshold = 2\n" + blocks + "[luks]\nmetadata_size = \"16KiB\"\n");
    const auto problems = Policy::load(dir / "small.toml").check();
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].line == 2 + 7 * 3 + 1);
    CHECK(problems[0].message.find("leaves 12287") != std::string::npos);
    CHECK(problems[0].message.find("use metadata_size = \"32KiB\"") != std::string::npos);
    CHECK(run_cli({"policy", "check", (dir / "small.toml").string()}).exit_code == 7);

    // Without a size the policy is valid, but binding it to an image formatted with the default 16 KiB must be
    // refused before anything is written.
    write_file(dir / "fleet.toml", "threshold = 2\n" + blocks);
    const Policy policy = Policy::load(dir / "fleet.toml");
    CHECK(policy.check().empty());
    CHECK(policy.format_options().metadata_bytes == 32 * 1024);
    const auto image = dir / "disk.img";
    const auto keyfile = dir / "pass";
    format_build_image(image, keyfile);
    const std::string before = read_file_bytes(image, 0, 16 * kMiB);
    {
        Volume volume = Volume::open(image, Volume::Access::read_only);
        const auto fits = policy.binding_fits(volume);
        REQUIRE(fits.has_value());
        CHECK(fits->message.find("do not fit the LUKS2 metadata") != std::string::npos);
        // Measured exactly through the servers' advertisements, it still does not fit.
        const auto measured = policy.binding_fits(volume, NetworkOptions{});
        REQUIRE(measured.has_value());
        CHECK(measured->message.find("about") == std::string::npos);
    }
    const RunResult bind = run_cli({"bind", image.string(), "--policy", (dir / "fleet.toml").string(),
                                    "--passphrase-file", keyfile.string()});
    INFO(bind.err);
    CHECK(bind.exit_code != 0);
    CHECK(bind.err.find("do not fit the LUKS2 metadata") != std::string::npos);
    CHECK(bind.err.find("format --policy") != std::string::npos);
    CHECK(read_file_bytes(image, 0, 16 * kMiB) == before);
}

TEST_CASE("six Tang servers: bind --policy measures the token online and fits the default 16 KiB") {
    auto servers = start_servers(6);
    TempDir dir;
    std::string blocks;
    for (const auto& server : servers) blocks += tang_block(*server);
    write_file(dir / "six.toml", "threshold = 3\n" + blocks);
    const Policy policy = Policy::load(dir / "six.toml");
    REQUIRE(policy.check().empty());
    const TokenEstimate offline = policy.estimate_token();
    const TokenEstimate online = policy.estimate_token(NetworkOptions{});
    CHECK_FALSE(offline.measured);
    CHECK(online.measured);
    // The per-server estimate errs on the safe side, by a few percent.
    CHECK(offline.token_bytes >= online.token_bytes);
    CHECK(offline.token_bytes < online.token_bytes * 110 / 100);

    const auto image = dir / "disk.img";
    const auto keyfile = dir / "pass";
    format_build_image(image, keyfile);
    const RunResult bind = run_cli({"bind", image.string(), "--policy", (dir / "six.toml").string(),
                                    "--passphrase-file", keyfile.string(), "--json"});
    INFO(bind.err);
    REQUIRE(bind.exit_code == 0);
    Volume volume = Volume::open(image, Volume::Access::read_only);
    const auto bindings = clevis::list(volume);
    REQUIRE(bindings.size() == 1);
    CHECK(bindings[0].pin == "sss");
    CHECK(volume.inspect().metadata_bytes == 16 * 1024);
    // The measured size is the real one: the stored token is exactly as long as predicted.
    const auto token = volume.token(bindings[0].token);
    REQUIRE(token.has_value());
    CHECK(token->json.size() <= online.token_bytes);
    CHECK(token->json.size() + 16 >= online.token_bytes);
    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.string(), "-s",
                                std::to_string(bindings[0].keyslot)});
    CHECK(pass.exit_code == 0);
}

TEST_CASE("seven Tang servers: format --policy reserves the metadata, bind --policy works, stock clevis unlocks") {
    auto servers = start_servers(7);
    TempDir dir;
    std::string blocks;
    for (const auto& server : servers) blocks += tang_block(*server);
    write_file(dir / "fleet.toml",
               "threshold = 2\n" + blocks + "[keyslot]\npbkdf = \"pbkdf2\"\niterations = 1000\n");
    const auto image = dir / "disk.img";
    const auto keyfile = dir / "pass";
    write_file(keyfile, "build passphrase");

    const RunResult format = run_cli({"format", image.string(), "--size", "32M", "--policy",
                                      (dir / "fleet.toml").string(), "--passphrase-file", keyfile.string(),
                                      "--pbkdf", "pbkdf2", "--pbkdf-iterations", "1000"});
    INFO(format.err);
    REQUIRE(format.exit_code == 0);
    const Policy policy = Policy::load(dir / "fleet.toml");
    {
        Volume volume = Volume::open(image, Volume::Access::read_only);
        CHECK(volume.inspect().metadata_bytes == 32 * 1024);
        CHECK_FALSE(policy.binding_fits(volume).has_value());
    }

    const RunResult bind = run_cli({"bind", image.string(), "--policy", (dir / "fleet.toml").string(),
                                    "--passphrase-file", keyfile.string()});
    INFO(bind.err);
    REQUIRE(bind.exit_code == 0);

    int slot = -1;
    {
        Volume volume = Volume::open(image, Volume::Access::read_only);
        const auto bindings = clevis::list(volume);
        REQUIRE(bindings.size() == 1);
        CHECK(bindings[0].pin == "sss");
        slot = bindings[0].keyslot;
        for (const auto& problem : policy.verify_volume(volume)) INFO(problem.to_string());
        CHECK(policy.verify_volume(volume).empty());
    }

    // Five of seven down: two remain, which is the threshold.
    for (int i = 0; i < 5; ++i) servers[i]->stop();
    const RunResult pass = run({"clevis", "luks", "pass", "-d", image.string(), "-s", std::to_string(slot)});
    INFO(pass.err);
    REQUIRE(pass.exit_code == 0);
    const RunResult open = run({"cryptsetup", "open", "--test-passphrase", "--key-slot", std::to_string(slot),
                                "--key-file", "-", image.string()},
                               pass.out);
    CHECK(open.exit_code == 0);
    CHECK(run_cli({"unlock", image.string(), "--test"}).exit_code == 0);
    servers[5]->stop();
    CHECK(run_cli({"unlock", image.string(), "--test"}).exit_code != 0);
}

TEST_CASE("verify_volume: cipher, key size and the Clevis keyslot's PBKDF against the policy") {
    TangServer a;
    TempDir dir;
    const auto image = dir / "disk.img";
    make_sparse_file(image, 32 * kMiB);
    write_file(dir / "pass", "build passphrase");
    run_ok({"cryptsetup", "luksFormat", "--type", "luks2", "--batch-mode", "--cipher", "aes-cbc-essiv:sha256",
            "--key-size", "256", "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000", "--key-file",
            (dir / "pass").string(), image.string()});
    const Policy policy =
        Policy::parse(tang_block(a) + "[luks]\ncipher = \"aes-xts-plain64\"\nkey_bits = 512\n"
                                      "[keyslot]\npbkdf = \"pbkdf2\"\niterations = 5000\n");
    REQUIRE(policy.check().empty());
    {
        Volume volume = Volume::open(image);
        clevis::BindOptions options;
        options.pbkdf = Pbkdf::pbkdf2_fast(1000);  // weaker than the policy's 5000
        clevis::bind(volume, policy.pin().name, policy.pin().config_json, "build passphrase", options);
    }
    Volume volume = Volume::open(image, Volume::Access::read_only);
    const auto problems = policy.verify_volume(volume);
    std::string all;
    for (const auto& problem : problems) all += problem.to_string() + "\n";
    INFO(all);
    CHECK(problems.size() == 3);
    CHECK(all.find("cipher is aes-cbc-essiv:sha256, the policy requires aes-xts-plain64") != std::string::npos);
    CHECK(all.find("volume key has 256 bits, the policy requires 512") != std::string::npos);
    CHECK(all.find("with 1000 iterations, the policy requires pbkdf2 with at least 5000") != std::string::npos);
}
