// Clevis pins: encrypt a secret to a policy (tang, tpm2, sss, null) as Clevis's compact JWE, and decrypt it again.
// The JWE formats match stock Clevis exactly (../shared/docs/clevis-tang-format.md): what one writes, the other
// reads.
#pragma once

#include <luksforge/secret.hpp>

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace luksforge {

// Limits for every HTTP exchange with a Tang server (libcurl).
struct NetworkOptions {
    long connect_timeout_ms = 3000;
    long total_timeout_ms = 10000;
    std::size_t max_response_bytes = 1 << 20;
    bool follow_redirects = false;
    // Set to true from another thread to abort transfers in flight (sss stops at t successes).
    std::shared_ptr<std::atomic<bool>> cancel;
};

struct PinOptions {
    NetworkOptions network;
    // Accept a Tang advertisement that is neither pinned by `thp` nor supplied offline (`adv`).
    // Off by default: the error then lists the advertisement's signing-key thumbprints to pin.
    bool trust_on_first_use = false;
};

// `pin` is "tang", "tpm2", "sss" or "null"; `config_json` is Clevis's pin configuration, e.g.
// {"url":...,"thp":...} or {"pcr_ids":"7"}. Returns the compact JWE (not secret). Throws FormatError for a bad
// config, TangError for network/trust, TpmError when the TPM (Clevis's rule: TPM2TOOLS_TCTI, else /dev/tpmrm?)
// cannot be used.
std::string clevis_encrypt(std::string_view pin, std::string_view config_json, std::span<const std::uint8_t> secret,
                           const PinOptions& options = {});
// Decrypt a compact JWE made by clevis_encrypt or by stock `clevis encrypt`. Throws AuthError when the JWE
// was tampered with (PcrMismatchError when a tpm2 binding's PCRs have changed), TangError when the server cannot
// be reached or refuses, TpmError when the TPM cannot be used.
SecretBuffer clevis_decrypt(std::string_view compact_jwe, const PinOptions& options = {});

}  // namespace luksforge
