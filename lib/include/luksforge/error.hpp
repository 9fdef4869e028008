// luksforge error hierarchy: every failure is a luksforge::Error (a std::system_error carrying an errno-style
// code and, where one exists, the C library's own message). Expected misses are std::optional, not exceptions.
#pragma once

#include <memory>
#include <string>
#include <system_error>

namespace luksforge {

class Error : public std::system_error {
public:
    // `code` is an errno value (EINVAL, ENOENT, EPERM, EBUSY, ...); `message` is one line for humans.
    Error(int code, const std::string& message)
        : std::system_error(code, std::generic_category(), message),
          message_(std::make_shared<const std::string>(message)) {}

    // Just the message: std::system_error would append ": <strerror(code)>", which repeats or contradicts
    // messages that already carry the C library's own words. The errno stays available through code().
    const char* what() const noexcept override { return message_->c_str(); }

private:
    std::shared_ptr<const std::string> message_;  // shared: copying an exception must not throw
};

// A passphrase, key or token did not open what it was meant to open (wrong passphrase, tampered JWE).
class AuthError : public Error {
public:
    explicit AuthError(const std::string& message, int code = EPERM) : Error(code, message) {}
};

// A file, device, keyslot, token or Tang key that was asked for does not exist.
class NotFoundError : public Error {
public:
    explicit NotFoundError(const std::string& message, int code = ENOENT) : Error(code, message) {}
};

// The device is in use (mounted, opened exclusively) or locked by another luksforge process.
class BusyError : public Error {
public:
    explicit BusyError(const std::string& message, int code = EBUSY) : Error(code, message) {}
};

// Talking to a Tang server failed: connection refused, timeout, HTTP error, bad or untrusted advertisement.
class TangError : public Error {
public:
    explicit TangError(const std::string& message, int code = EHOSTUNREACH) : Error(code, message) {}
};

// Input is not in the expected format: not LUKS, LUKS1 where LUKS2 is needed, malformed JSON/JWE/TOML,
// an image too small, an option out of range.
class FormatError : public Error {
public:
    explicit FormatError(const std::string& message, int code = EINVAL) : Error(code, message) {}
};

}  // namespace luksforge
