// Secrets: a move-only buffer that tries to mlock() its pages and always wipes them, plus the kernel CSPRNG.
// Passphrases, volume keys and recovered Clevis secrets live only in SecretBuffer — never in std::string.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string_view>

namespace luksforge {

class SecretBuffer {
public:
    SecretBuffer() noexcept = default;
    // `size` zero bytes.
    explicit SecretBuffer(std::size_t size);
    // A copy of `bytes` (the caller remains responsible for wiping its own copy).
    SecretBuffer(const void* bytes, std::size_t size);
    static SecretBuffer copy_of(std::string_view bytes) { return SecretBuffer(bytes.data(), bytes.size()); }

    SecretBuffer(SecretBuffer&& other) noexcept;
    SecretBuffer& operator=(SecretBuffer&& other) noexcept;
    SecretBuffer(const SecretBuffer&) = delete;
    SecretBuffer& operator=(const SecretBuffer&) = delete;
    ~SecretBuffer() noexcept;

    std::uint8_t* data() noexcept { return data_; }
    const std::uint8_t* data() const noexcept { return data_; }
    char* chars() noexcept { return reinterpret_cast<char*>(data_); }
    const char* chars() const noexcept { return reinterpret_cast<const char*>(data_); }
    std::size_t size() const noexcept { return size_; }
    bool empty() const noexcept { return size_ == 0; }
    // A non-owning view; valid while this buffer lives and is not resized.
    std::string_view view() const noexcept { return {chars(), size_}; }
    std::span<const std::uint8_t> bytes() const noexcept { return {data_, size_}; }

    // Grow or shrink, keeping the first min(old, new) bytes; wipes the old storage.
    void resize(std::size_t size);
    // Append bytes (reallocates through resize, so nothing is left behind unwiped).
    void append(const void* bytes, std::size_t size);
    // Whether mlock() succeeded for the current storage (it may not, e.g. under RLIMIT_MEMLOCK).
    bool locked() const noexcept { return locked_; }
    // Constant-time equality.
    bool equals(std::span<const std::uint8_t> other) const noexcept;

private:
    void release() noexcept;
    std::uint8_t* data_ = nullptr;
    std::size_t size_ = 0;
    std::size_t capacity_ = 0;
    bool locked_ = false;
};

// Fill `out` from the kernel CSPRNG (getrandom(2), blocking until it is seeded). Throws Error on failure.
void random_bytes(std::span<std::uint8_t> out);
SecretBuffer random_secret(std::size_t size);

// A printable random passphrase with at least `entropy_bits` bits of entropy (base64url alphabet, 6 bits a
// character; 256 bits → 43 characters).
SecretBuffer generate_passphrase(std::size_t entropy_bits = 256);

// Read a secret exactly as cryptsetup's --key-file does: every byte, trailing newline included.
// `path` "-" means standard input. `max_size` guards against reading a disk by mistake.
SecretBuffer read_secret_file(const std::filesystem::path& path, std::size_t max_size = 8192 * 1024);
SecretBuffer read_secret_fd(int fd, std::size_t max_size = 8192 * 1024);
// Write a secret to a new file created with mode 0600 (fails if it exists unless `overwrite`).
void write_secret_file(const std::filesystem::path& path, std::span<const std::uint8_t> secret, bool overwrite = false);
// Write all of `secret` to `fd`, retrying on EINTR and short writes.
void write_secret_fd(int fd, std::span<const std::uint8_t> secret);

// Base64url without padding (RFC 4648 §5), as JOSE and Clevis use it. Encoded secrets stay secrets.
SecretBuffer base64url_encode(std::span<const std::uint8_t> bytes);
SecretBuffer base64url_decode(std::string_view text);
// Whether every character is of the unpadded base64url alphabet (empty text is), as RFC 7515 compact JWE parts are.
bool is_base64url(std::string_view text) noexcept;  // throws FormatError on bad input

}  // namespace luksforge
