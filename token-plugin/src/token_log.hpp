// Messages from the handler into libcryptsetup's log (crypt_log), the only output channel a handler has:
// cryptsetup prints them, systemd-cryptsetup forwards them to the journal. Only descriptions go there —
// token numbers, pin names, URLs, error messages — never a passphrase or key; the text is cut to one line of
// printable ASCII so a hostile header or server cannot inject terminal escapes or fake lines.
#pragma once

#include <string_view>

struct crypt_device;

namespace luksforge::token {

void log_error(crypt_device* cd, std::string_view text) noexcept;
void log_verbose(crypt_device* cd, std::string_view text) noexcept;
void log_debug(crypt_device* cd, std::string_view text) noexcept;
// luksDump lines: "\t<label padded to 11>: <value>".
void log_dump_line(crypt_device* cd, std::string_view label, std::string_view value) noexcept;

}  // namespace luksforge::token
