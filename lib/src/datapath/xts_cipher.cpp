#include "datapath/xts_cipher.hpp"

#include <luksforge/error.hpp>

#include <openssl/err.h>
#include <openssl/evp.h>

#include <climits>

namespace luksforge::datapath {

namespace {

[[noreturn]] void throw_openssl(const std::string& what) {
    const unsigned long code = ERR_get_error();
    char text[256] = "unknown OpenSSL error";
    if (code != 0) ERR_error_string_n(code, text, sizeof text);
    ERR_clear_error();
    throw Error(EIO, what + ": " + text);
}

const EVP_CIPHER* evp_for(std::size_t key_bytes) {
    // XTS takes two AES keys: 2 x 128 or 2 x 256 bits.
    return key_bytes == 32 ? EVP_aes_128_xts() : EVP_aes_256_xts();
}

}  // namespace

std::string CipherSpec::describe() const {
    return cipher + "-" + mode + ", " + std::to_string(key_bytes * 8) + "-bit key, " + std::to_string(sector_size) +
           "-byte sectors";
}

std::optional<std::string> unsupported_reason(const CipherSpec& spec) {
    if (spec.cipher != "aes" || spec.mode != "xts-plain64")
        return "cipher " + spec.cipher + "-" + spec.mode + " (the one-pass data path implements aes-xts-plain64)";
    if (spec.key_bytes != 32 && spec.key_bytes != 64)
        return std::to_string(spec.key_bytes * 8) + "-bit aes-xts key (the one-pass data path implements 256 and 512)";
    if (spec.sector_size < 512 || spec.sector_size > 4096 || (spec.sector_size & (spec.sector_size - 1)) != 0)
        return "sector size " + std::to_string(spec.sector_size);
    return std::nullopt;
}

void XtsCipher::CtxDeleter::operator()(EVP_CIPHER_CTX* ctx) const noexcept { EVP_CIPHER_CTX_free(ctx); }

XtsCipher::XtsCipher(const CipherSpec& spec, const SecretBuffer& key, Direction direction)
    : sector_size_(spec.sector_size) {
    if (auto reason = unsupported_reason(spec)) throw FormatError("unsupported " + *reason);
    if (key.size() != spec.key_bytes)
        throw FormatError("volume key has " + std::to_string(key.size()) + " bytes, the segment needs " +
                          std::to_string(spec.key_bytes));
    ctx_.reset(EVP_CIPHER_CTX_new());
    if (!ctx_) throw_openssl("cannot allocate a cipher context");
    // The key schedule is computed once; transform() only changes the tweak per data unit.
    if (EVP_CipherInit_ex(ctx_.get(), evp_for(spec.key_bytes), nullptr, key.data(), nullptr,
                          direction == Direction::encrypt ? 1 : 0) != 1)
        throw_openssl("cannot set up " + spec.describe());
}

XtsCipher::XtsCipher(XtsCipher&&) noexcept = default;
XtsCipher& XtsCipher::operator=(XtsCipher&&) noexcept = default;
XtsCipher::~XtsCipher() noexcept = default;

void XtsCipher::transform(std::uint8_t* data, std::size_t bytes, std::uint64_t first_iv_sector) {
    if (bytes % sector_size_ != 0) throw FormatError("data is not a whole number of sectors");
    const std::uint64_t step = sector_size_ / 512;
    std::uint64_t sector = first_iv_sector;
    for (std::size_t offset = 0; offset < bytes; offset += sector_size_, sector += step) {
        unsigned char iv[16] = {};
        for (int i = 0; i < 8; ++i) iv[i] = static_cast<unsigned char>(sector >> (8 * i));
        int out = 0;
        if (EVP_CipherInit_ex(ctx_.get(), nullptr, nullptr, nullptr, iv, -1) != 1 ||
            EVP_CipherUpdate(ctx_.get(), data + offset, &out, data + offset, static_cast<int>(sector_size_)) != 1 ||
            out != static_cast<int>(sector_size_))
            throw_openssl("AES-XTS failed at sector " + std::to_string(sector));
    }
}

}  // namespace luksforge::datapath
