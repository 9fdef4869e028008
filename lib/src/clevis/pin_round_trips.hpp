// Internal: a bind's pin round trips (the advertisement before, the recovery that proves the binding after) run
// on a second thread beside the header work on this one. They touch only libcurl, libjose and the TPM, never
// libcryptsetup (not thread-safe), so a bind costs the longer of the two paths instead of their sum: the volume
// key's derivation overlaps the advertisement, the keyslot and token writes overlap the proof's recovery.
#pragma once

#include <luksforge/pin.hpp>
#include <luksforge/secret.hpp>

#include <atomic>
#include <future>
#include <memory>
#include <string>
#include <string_view>

namespace luksforge {
class Volume;
}

namespace luksforge::clevis::internal {

// A fresh Clevis slot passphrase and its JWE, encrypted by the pin on another thread from construction on.
// Destruction (any early return or exception of the caller) cancels the pin's transfers and waits for them.
class PendingEncryption {
public:
    PendingEncryption(std::string_view pin, std::string_view config_json, const PinOptions& options);
    PendingEncryption(const PendingEncryption&) = delete;
    PendingEncryption& operator=(const PendingEncryption&) = delete;
    ~PendingEncryption() noexcept;

    const SecretBuffer& passphrase() const noexcept { return passphrase_; }
    // The compact JWE; rethrows what the pin threw (FormatError, TangError, TpmError). Once only.
    std::string get();

private:
    // Declared before the future: the thread reads them, and members die in reverse order (future first).
    SecretBuffer passphrase_;
    std::string pin_;
    std::string config_;
    PinOptions options_;
    std::shared_ptr<std::atomic<bool>> own_cancel_;
    std::future<std::string> jwe_;
};

// The proof of a binding, its pin decryption started before the binding is written. finish() checks what a
// proof made after the writes would: the stored token is byte for byte the JWE that went through the pin, the
// pin gave back the slot passphrase, and that passphrase opens the keyslot.
class PendingProof {
public:
    PendingProof(std::string compact_jwe, const PinOptions& options);
    PendingProof(const PendingProof&) = delete;
    PendingProof& operator=(const PendingProof&) = delete;
    ~PendingProof() noexcept;

    // Throws AuthError (another JWE stored, another passphrase recovered, the keyslot does not open) or what the
    // pin's decryption threw (TangError, ...). The keyslot is opened while the recovery may still be in flight.
    void finish(const Volume& volume, std::string_view stored_jwe, const SecretBuffer& passphrase, int keyslot);

private:
    std::string jwe_;
    PinOptions options_;
    std::shared_ptr<std::atomic<bool>> own_cancel_;
    std::future<SecretBuffer> recovered_;
};

}  // namespace luksforge::clevis::internal
