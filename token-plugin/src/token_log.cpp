// crypt_log wrappers (token_log.hpp).
#include "token_log.hpp"

#include <libcryptsetup.h>

#include <array>
#include <cstddef>

namespace luksforge::token {
namespace {

constexpr std::size_t kMaxLine = 480;

// Copy `text` into `out` as printable ASCII (anything else becomes '?'), cut to kMaxLine, then '\n' and NUL.
// No allocation: this runs in error paths, including after std::bad_alloc.
void sanitise(std::string_view text, std::array<char, kMaxLine + 2>& out) noexcept {
    std::size_t n = 0;
    for (char c : text) {
        if (n == kMaxLine) break;
        out[n++] = (c >= 0x20 && c < 0x7f) || c == '\t' ? c : '?';
    }
    out[n++] = '\n';
    out[n] = '\0';
}

void emit(crypt_device* cd, int level, std::string_view text) noexcept {
    std::array<char, kMaxLine + 2> line{};
    sanitise(text, line);
    crypt_log(cd, level, line.data());
}

}  // namespace

void log_error(crypt_device* cd, std::string_view text) noexcept { emit(cd, CRYPT_LOG_ERROR, text); }
void log_verbose(crypt_device* cd, std::string_view text) noexcept { emit(cd, CRYPT_LOG_VERBOSE, text); }
void log_debug(crypt_device* cd, std::string_view text) noexcept { emit(cd, CRYPT_LOG_DEBUG, text); }

void log_dump_line(crypt_device* cd, std::string_view label, std::string_view value) noexcept {
    // cryptsetup's own token lines look like "\tKeyslot:    1" (label and colon padded to 12 columns).
    std::array<char, kMaxLine + 2> line{};
    std::size_t n = 0;
    line[n++] = '\t';
    for (char c : label)
        if (n < 40) line[n++] = c;
    line[n++] = ':';
    do line[n++] = ' ';
    while (n < 13);
    std::array<char, kMaxLine + 2> rest{};
    sanitise(value, rest);
    for (std::size_t i = 0; rest[i] != '\0' && n < kMaxLine + 1; ++i) line[n++] = rest[i];
    if (line[n - 1] != '\n') line[n++] = '\n';
    line[n] = '\0';
    // Verbose, not normal: Clevis's own scripts find "the token of keyslot N" in plain `cryptsetup luksDump`
    // output as the line right before "Keyslot: N" (grep -B1); lines between them would break stock
    // `clevis luks unlock/pass/unbind/regen` wherever this handler is installed. `luksDump -v` shows them.
    crypt_log(cd, CRYPT_LOG_VERBOSE, line.data());
}

}  // namespace luksforge::token
