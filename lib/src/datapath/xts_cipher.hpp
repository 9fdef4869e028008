// Internal: dm-crypt's data-unit cipher for the one-pass data path. AES-XTS with the plain64 IV exactly as
// dm-crypt applies it to a LUKS2 segment: every `sector_size` block is one XTS data unit whose tweak is the
// little-endian number of its first 512-byte sector, counted from the segment start plus the segment's
// iv_tweak (LUKS2 never sets iv_large_sectors), zero-padded to 16 bytes. Runs on OpenSSL EVP (AES-NI / VAES).
#pragma once

#include <luksforge/secret.hpp>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

typedef struct evp_cipher_ctx_st EVP_CIPHER_CTX;
typedef struct evp_cipher_st EVP_CIPHER;

namespace luksforge::datapath {

// The cipher of a LUKS2 segment as the header names it ("aes" + "xts-plain64", key size in bytes).
struct CipherSpec {
    std::string cipher;
    std::string mode;
    std::size_t key_bytes = 0;
    std::uint32_t sector_size = 512;

    std::string describe() const;  // "aes-xts-plain64, 512-bit key, 4096-byte sectors"
};

// Whether the one-pass data path implements `spec`; nullopt when it does, else why not (one line, for the
// fallback notice). Implemented: aes-xts-plain64 with a 256- or 512-bit key and sectors of 512..4096 bytes.
std::optional<std::string> unsupported_reason(const CipherSpec& spec);

// One direction (encrypt or decrypt) of one key. Not thread-safe: one per worker thread. Move-only; the key
// schedule lives in OpenSSL's context and is wiped when it is freed.
class XtsCipher {
public:
    enum class Direction { decrypt, encrypt };
    // Throws FormatError when unsupported_reason(spec) is set or `key` has the wrong size.
    XtsCipher(const CipherSpec& spec, const SecretBuffer& key, Direction direction);
    XtsCipher(XtsCipher&&) noexcept;
    XtsCipher& operator=(XtsCipher&&) noexcept;
    XtsCipher(const XtsCipher&) = delete;
    XtsCipher& operator=(const XtsCipher&) = delete;
    ~XtsCipher() noexcept;

    EVP_CIPHER_CTX* native_handle() const noexcept { return ctx_.get(); }
    std::uint32_t sector_size() const noexcept { return sector_size_; }

    // Transform `bytes` (a multiple of the sector size) in place. `first_iv_sector` is the plain64 IV of the
    // first data unit (512-byte sectors from the segment start, plus iv_tweak); each further unit adds
    // sector_size / 512.
    void transform(std::uint8_t* data, std::size_t bytes, std::uint64_t first_iv_sector);

private:
    struct CtxDeleter {
        void operator()(EVP_CIPHER_CTX* ctx) const noexcept;
    };
    std::unique_ptr<EVP_CIPHER_CTX, CtxDeleter> ctx_;
    std::uint32_t sector_size_ = 512;
};

}  // namespace luksforge::datapath
