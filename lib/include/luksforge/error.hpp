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

// A tpm2 binding's PCR policy does not hold: a PCR it is bound to has changed since the binding was made
// (another boot chain, firmware or Secure Boot state), so the TPM refuses to unseal.
class PcrMismatchError : public AuthError {
public:
    explicit PcrMismatchError(const std::string& message, int code = EPERM) : AuthError(message, code) {}
};

// The TPM2 could not be used: no TPM (no /dev/tpmrm*, TPM2TOOLS_TCTI unset), its TCTI cannot be loaded or does
// not answer, or the TPM failed a command for a reason other than a policy or key mismatch.
class TpmError : public Error {
public:
    explicit TpmError(const std::string& message, int code = ENODEV) : Error(code, message) {}
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
