// The passphrase buffer the handler hands to libcryptsetup: plain malloc() memory (libcryptsetup may free it
// itself with free() when a handler has no buffer_free), mlock()ed when possible, wiped before it is freed.
#pragma once

#include <luksforge/secret.hpp>

#include <cstddef>

namespace luksforge::token {

// Copy `secret` into a new buffer for libcryptsetup. Returns 0, or -ENOMEM (nothing allocated).
int hand_over(const SecretBuffer& secret, char** buffer, std::size_t* buffer_len) noexcept;
// Wipe, unlock and free a buffer made by hand_over (nullptr is fine).
void free_handed(void* buffer, std::size_t buffer_len) noexcept;

}  // namespace luksforge::token
