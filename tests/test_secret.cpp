// Secrets: SecretBuffer semantics, CSPRNG, passphrase generation, cryptsetup-exact secret files, base64url.
#define DOCTEST_CONFIG_IMPLEMENT_WITH_MAIN
#include <doctest/doctest.h>

#include "testutil.hpp"

#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <set>
#include <string>

using namespace luksforge;
using namespace luksforge::test;

TEST_CASE("SecretBuffer: copy, move, resize, append, equality, mlock attempt") {
    SecretBuffer a = SecretBuffer::copy_of("hello");
    CHECK(a.size() == 5);
    CHECK(a.view() == "hello");
    CHECK(a.locked());  // tests run as root: mlock succeeds
    a.append(" world", 6);
    CHECK(a.view() == "hello world");
    a.append(a.data(), 5);  // appending from itself must survive the reallocation
    CHECK(a.view() == "hello worldhello");
    a.resize(5);
    CHECK(a.view() == "hello");
    a.resize(8);
    CHECK(a.view() == std::string_view("hello\0\0\0", 8));
    SecretBuffer b(std::move(a));
    CHECK(a.empty());
    CHECK(a.data() == nullptr);
    CHECK(b.size() == 8);
    SecretBuffer c;
    c = std::move(b);
    CHECK(b.empty());
    CHECK(c.equals(SecretBuffer::copy_of(std::string_view("hello\0\0\0", 8)).bytes()));
    CHECK_FALSE(c.equals(SecretBuffer::copy_of("hello").bytes()));
    CHECK_FALSE(c.equals(SecretBuffer::copy_of(std::string_view("hellO\0\0\0", 8)).bytes()));
    SecretBuffer zeros(16);
    CHECK(zeros.view() == std::string(16, '\0'));
}

TEST_CASE("random bytes and passphrases") {
    SecretBuffer x = random_secret(32), y = random_secret(32);
    CHECK(x.size() == 32);
    CHECK_FALSE(x.equals(y.bytes()));
    CHECK(x.view() != std::string(32, '\0'));

    SecretBuffer p = generate_passphrase();
    CHECK(p.size() == 43);  // ceil(256 / 6)
    for (char ch : p.view()) CHECK(std::string_view("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_").find(ch) != std::string_view::npos);
    CHECK(generate_passphrase(128).size() == 22);
    CHECK(generate_passphrase(6).size() == 1);
    CHECK(generate_passphrase(7).size() == 2);
    std::set<std::string> seen;
    for (int i = 0; i < 50; ++i) seen.insert(std::string(generate_passphrase(64).view()));
    CHECK(seen.size() == 50);
    CHECK_THROWS_AS(generate_passphrase(0), FormatError);
}

TEST_CASE("secret files: exact bytes like cryptsetup --key-file, size cap, stdin, 0600 output") {
    TempDir dir;
    const std::string bytes("pass\nword\0\xff\n", 12);
    write_file(dir / "key", bytes);
    CHECK(read_secret_file(dir / "key").view() == bytes);
    CHECK(read_secret_file(dir / "key", 12).view() == bytes);
    CHECK_THROWS_AS(read_secret_file(dir / "key", 11), FormatError);
    CHECK_THROWS_AS(read_secret_file(dir / "missing"), NotFoundError);
    write_file(dir / "empty", "");
    CHECK(read_secret_file(dir / "empty").empty());
    const std::string big(100000, 'k');
    write_file(dir / "big", big);
    CHECK(read_secret_file(dir / "big").view() == big);

    int fds[2];
    REQUIRE(::pipe(fds) == 0);
    REQUIRE(::write(fds[1], "from pipe", 9) == 9);
    ::close(fds[1]);
    CHECK(read_secret_fd(fds[0]).view() == "from pipe");
    ::close(fds[0]);

    const auto out = dir / "out";
    write_secret_file(out, SecretBuffer::copy_of("secret!").bytes());
    struct stat st {};
    REQUIRE(::stat(out.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(read_file_bytes(out) == "secret!");
    CHECK_THROWS_AS(write_secret_file(out, SecretBuffer::copy_of("again").bytes()), Error);
    CHECK(read_file_bytes(out) == "secret!");
    // Overwriting a file that was world-readable makes it private first.
    REQUIRE(::chmod(out.c_str(), 0644) == 0);
    write_secret_file(out, SecretBuffer::copy_of("new").bytes(), true);
    REQUIRE(::stat(out.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    CHECK(read_file_bytes(out) == "new");
}

TEST_CASE("stdin (\"-\") is read exactly: checked through the CLI in a child process") {
    // The CLI reads the passphrase from stdin; a keyslot made that way opens with a key file of the same bytes.
    TempDir dir;
    const auto image = dir / "d.img";
    const std::string pass("stdin pass\n", 11);
    auto r = run_cli({"format", image.string(), "--size", "32M", "--passphrase-file", "-", "--pbkdf", "pbkdf2",
                      "--pbkdf-iterations", "1000"},
                     pass);
    REQUIRE_MESSAGE(r.exit_code == 0, r.err);
    write_file(dir / "key", pass);
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-file", (dir / "key").string(), image.string()}).exit_code == 0);
    write_file(dir / "key2", "stdin pass");  // without the newline: a different passphrase
    CHECK(run({"cryptsetup", "open", "--test-passphrase", "--key-file", (dir / "key2").string(), image.string()}).exit_code != 0);
}

TEST_CASE("base64url without padding") {
    const auto enc = [](std::string_view s) {
        return std::string(base64url_encode({reinterpret_cast<const std::uint8_t*>(s.data()), s.size()}).view());
    };
    CHECK(enc("") == "");
    CHECK(enc("f") == "Zg");
    CHECK(enc("fo") == "Zm8");
    CHECK(enc("foo") == "Zm9v");
    CHECK(enc("foob") == "Zm9vYg");
    CHECK(enc("fooba") == "Zm9vYmE");
    CHECK(enc("foobar") == "Zm9vYmFy");
    CHECK(enc("\xfb\xff\xfe") == "-__-");
    CHECK(base64url_decode("Zm9vYmE").view() == "fooba");
    CHECK(base64url_decode("-__-").view() == "\xfb\xff\xfe");
    CHECK(base64url_decode("").empty());
    CHECK_THROWS_AS(base64url_decode("Zm9v="), FormatError);
    CHECK_THROWS_AS(base64url_decode("Zm+v"), FormatError);
    CHECK_THROWS_AS(base64url_decode("Z"), FormatError);
    CHECK_THROWS_AS(base64url_decode("Zh"), FormatError);  // non-zero trailing bits
    SecretBuffer random = random_secret(1000);
    CHECK(base64url_decode(base64url_encode(random.bytes()).view()).equals(random.bytes()));
}
