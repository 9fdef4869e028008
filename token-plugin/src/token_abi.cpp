// The five entry points of libcryptsetup's external token ABI CRYPTSETUP_TOKEN_1.0 for token type "clevis".
// Each is a noexcept C function that catches everything: no C++ exception ever unwinds into libcryptsetup.
//
// Return codes follow libcryptsetup's token loop (lib/luks2/luks2_token.c): any error other than -ENOENT,
// -EPERM, -EAGAIN, -ENOANO stops the loop over tokens, so the handler only returns those (and -ENOMEM) and the
// next token (another clevis binding, a tpm2 one) still gets its turn. -EAGAIN ("requires additional missing
// resource") means the Tang server(s) could not be reached; the reason goes to libcryptsetup's log.
//
// Cancellation: the ABI has none (open gets cd, token and the caller's usrptr only, up to cryptsetup 2.8), so the
// handler bounds its own time: every Tang request has a connect and a total timeout (sss children run in
// parallel), see handler_options(); and while open runs, SIGINT/SIGTERM abort its requests (SignalCancel,
// chained to the host's own handlers) and open returns -ECANCELED. That code is not one of the four the token
// loop continues after, on purpose: the user asked to stop, so no further token is tried, and cryptsetup,
// whose handler saw the signal too, exits instead of asking for a passphrase.
#include "clevis_token.hpp"
#include "handed_secret.hpp"
#include "signal_cancel.hpp"
#include "token_log.hpp"

#include <luksforge/error.hpp>
#include <luksforge/pin.hpp>

#include <libcryptsetup.h>

#include <atomic>
#include <cerrno>
#include <csignal>
#include <memory>
#include <new>
#include <utility>

#define LUKSFORGE_TOKEN_EXPORT extern "C" __attribute__((visibility("default")))

namespace {

using namespace luksforge;

// A hanging handler blocks the whole unlock (cryptsetup, systemd-cryptsetup, the initramfs): a dead Tang costs
// at most the connect timeout, a stalled one the total timeout, per level of sss nesting.
PinOptions handler_options(std::shared_ptr<std::atomic<bool>> cancel) {
    PinOptions options;
    options.network.cancel = std::move(cancel);
    options.network.connect_timeout_ms = 3000;
    options.network.total_timeout_ms = 10000;
    options.network.max_response_bytes = 64 * 1024;  // a Tang reply is one JWK
    options.network.follow_redirects = false;
    return options;
}

int open_token(crypt_device* cd, int token, const token::SignalCancel& cancel, char** buffer,
               std::size_t* buffer_len) {
    const char* json = nullptr;
    if (crypt_token_json_get(cd, token, &json) < 0 || json == nullptr) return -ENOENT;
    const token::ClevisToken parsed = token::parse_clevis_token(json);
    if (!token::openable_pins(parsed.compact_jwe)) {
        token::log_verbose(cd, token::TokenPrefix(token).view(),
                           "pin not supported by this handler (tang and sss only)");
        return -ENOENT;
    }
    token::log_debug(cd, token::TokenPrefix(token).view(), "recovering the keyslot passphrase through Tang");
    const SecretBuffer passphrase = clevis_decrypt(parsed.compact_jwe, handler_options(cancel.flag()));
    return token::hand_over(passphrase, buffer, buffer_len);
}

}  // namespace

LUKSFORGE_TOKEN_EXPORT int cryptsetup_token_open(crypt_device* cd, int token, char** buffer, size_t* buffer_len,
                                                 void* /*usrptr*/) noexcept {
    if (buffer == nullptr || buffer_len == nullptr) return -EINVAL;
    *buffer = nullptr;
    *buffer_len = 0;
    // Catch blocks must not allocate (std::bad_alloc would escape a noexcept function and abort the host).
    const auto fail = [&](int code, const char* what, const char* why) noexcept {
        token::log_error(cd, token::TokenPrefix(token).view(), what, why);
        return code;
    };
    const token::SignalCancel cancel;  // until open returns; restores the host's signal handlers
    try {
        return open_token(cd, token, cancel, buffer, buffer_len);
    } catch (const TangError& e) {
        if (const int sig = cancel.signal(); sig != 0)
            return fail(-ECANCELED, sig == SIGINT ? "cancelled by SIGINT: " : "cancelled by SIGTERM: ", e.what());
        return fail(-EAGAIN, "Tang unavailable: ", e.what());
    } catch (const AuthError& e) {
        return fail(-EPERM, "JWE does not decrypt: ", e.what());
    } catch (const FormatError& e) {
        return fail(-ENOENT, "malformed: ", e.what());
    } catch (const std::bad_alloc&) {
        return fail(-ENOMEM, "out of memory", "");
    } catch (const std::exception& e) {
        return fail(-ENOENT, "cannot unlock: ", e.what());
    } catch (...) {
        return fail(-ENOENT, "cannot unlock (unknown error)", "");
    }
}

LUKSFORGE_TOKEN_EXPORT void cryptsetup_token_buffer_free(void* buffer, size_t buffer_len) noexcept {
    token::free_handed(buffer, buffer_len);
}

LUKSFORGE_TOKEN_EXPORT int cryptsetup_token_validate(crypt_device* cd, const char* json) noexcept {
    if (json == nullptr) return -EINVAL;
    try {
        (void)token::parse_clevis_token(json);
        return 0;
    } catch (const std::exception& e) {
        token::log_error(cd, "Invalid clevis token: ", e.what());  // no allocation here
    } catch (...) {
        token::log_error(cd, "Invalid clevis token");
    }
    return -EINVAL;
}

LUKSFORGE_TOKEN_EXPORT void cryptsetup_token_dump(crypt_device* cd, const char* json) noexcept {
    if (json == nullptr) return;
    try {
        const token::ClevisToken parsed = token::parse_clevis_token(json);
        for (const auto& [label, value] : token::describe_pins(parsed.compact_jwe))
            token::log_dump_line(cd, label, value);
    } catch (const std::exception& e) {
        token::log_dump_line(cd, "Clevis", "malformed token: ", e.what());  // no allocation here
    } catch (...) {
        token::log_dump_line(cd, "Clevis", "malformed token");
    }
}

LUKSFORGE_TOKEN_EXPORT const char* cryptsetup_token_version() noexcept { return LUKSFORGE_TOKEN_VERSION; }
