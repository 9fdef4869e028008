// Hand-over buffers for libcryptsetup (handed_secret.hpp).
#include "handed_secret.hpp"

#include <sys/mman.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>

namespace luksforge::token {

int hand_over(const SecretBuffer& secret, char** buffer, std::size_t* buffer_len) noexcept {
    // One spare byte keeps malloc(0) out of the picture and leaves a NUL after the passphrase; it is wiped
    // with the rest because free_handed() is told the passphrase length and wipes one byte more.
    char* copy = static_cast<char*>(std::malloc(secret.size() + 1));
    if (copy == nullptr) return -ENOMEM;
    copy[secret.size()] = '\0';
    (void)mlock(copy, secret.size() + 1);  // best effort, as SecretBuffer does (RLIMIT_MEMLOCK may refuse)
    if (!secret.empty()) std::memcpy(copy, secret.data(), secret.size());
    *buffer = copy;
    *buffer_len = secret.size();
    return 0;
}

void free_handed(void* buffer, std::size_t buffer_len) noexcept {
    if (buffer == nullptr) return;
    explicit_bzero(buffer, buffer_len + 1);
    (void)munlock(buffer, buffer_len + 1);
    std::free(buffer);
}

}  // namespace luksforge::token
