// The handler is built without the library's tpm2 pin (token-plugin/CMakeLists.txt says why): a tpm2 binding,
// alone or as a share of sss, is Clevis's business here. The pin dispatcher it shares with the library still
// names tpm2, so these two answer for it: a TpmError, which sss counts as one failed share (a Tang share may
// still reach the threshold) and which the handler reports as "not this token", so libcryptsetup moves on.
#include "pins/pins.hpp"

#include <luksforge/error.hpp>

#include <cerrno>

namespace luksforge::detail {

namespace {
[[noreturn]] void no_tpm2() {
    throw TpmError("tpm2: not opened by libcryptsetup-token-clevis.so (tpm2 bindings are left to Clevis)", ENOTSUP);
}
}  // namespace

std::string tpm2_encrypt(const json_t*, std::span<const std::uint8_t>) { no_tpm2(); }

SecretBuffer tpm2_decrypt(std::string_view, const json_t*) { no_tpm2(); }

}  // namespace luksforge::detail
