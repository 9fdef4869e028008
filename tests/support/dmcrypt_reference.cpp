#include "dmcrypt_reference.hpp"

#include <doctest/doctest.h>
#include <openssl/evp.h>

#include <memory>

namespace luksforge::test {

std::string decrypt_xts_plain64(const std::string& ciphertext, const SecretBuffer& key, std::uint32_t sector_size) {
    REQUIRE(key.size() == 64);
    REQUIRE(sector_size % 512 == 0);
    REQUIRE(ciphertext.size() % sector_size == 0);
    std::string plain(ciphertext.size(), '\0');
    std::unique_ptr<EVP_CIPHER_CTX, decltype(&EVP_CIPHER_CTX_free)> ctx(EVP_CIPHER_CTX_new(), EVP_CIPHER_CTX_free);
    REQUIRE(ctx != nullptr);
    bool ok = true;
    for (std::size_t offset = 0; ok && offset < ciphertext.size(); offset += sector_size) {
        unsigned char iv[16] = {};
        const std::uint64_t sector = offset / 512;
        for (int i = 0; i < 8; ++i) iv[i] = static_cast<unsigned char>(sector >> (8 * i));
        int out_len = 0;
        ok = EVP_DecryptInit_ex(ctx.get(), EVP_aes_256_xts(), nullptr, key.data(), iv) == 1 &&
             EVP_DecryptUpdate(ctx.get(), reinterpret_cast<unsigned char*>(plain.data() + offset), &out_len,
                               reinterpret_cast<const unsigned char*>(ciphertext.data() + offset),
                               static_cast<int>(sector_size)) == 1 &&
             out_len == static_cast<int>(sector_size);
    }
    REQUIRE(ok);
    return plain;
}

}  // namespace luksforge::test
