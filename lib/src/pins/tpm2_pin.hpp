// Internal: the tpm2 pin's configuration and JWE header, parsed and validated without a TPM (so bad input is
// refused before anything touches the TPM or a volume, and the parsing can be tested and fuzzed on its own).
#pragma once

#include <jansson.h>

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace luksforge::detail {

// One hash algorithm as Clevis (tpm2-tools) names it: "sha1", "sha256", "sha384", "sha512".
struct Tpm2Hash {
    std::string_view name;
    std::uint16_t alg_id = 0;  // TPM2_ALG_SHA*
    std::size_t digest_size = 0;
};
// Throws FormatError naming `what` ("hash", "pcr_bank") and the supported names.
Tpm2Hash tpm2_hash(std::string_view name, std::string_view what);

// "0,7" or ["0","7"] or [0,7] (Clevis accepts all three; whitespace is dropped as Clevis drops it) as the
// normalised string Clevis writes ("0,7", in the order given) and the PCR numbers (0-23, no repeats).
struct Tpm2Pcrs {
    std::string ids;
    std::vector<unsigned> numbers;
    bool empty() const noexcept { return numbers.empty(); }
};
Tpm2Pcrs parse_pcr_ids(const json_t* value);

// `clevis encrypt tpm2 CONFIG`: {"hash":"sha256","key":"ecc","pcr_bank":"sha1","pcr_ids":"7","pcr_digest":".."}
// with Clevis 19's defaults. Unknown members and values of the wrong type are refused (FormatError).
struct Tpm2Config {
    Tpm2Hash hash;
    std::string key = "ecc";  // the primary key's algorithm: "ecc" (NIST P-256) or "rsa" (2048)
    Tpm2Hash pcr_bank;
    Tpm2Pcrs pcrs;
    std::vector<std::uint8_t> pcr_digest;  // the PCR values to seal to (concatenated); empty = read from the TPM
};
Tpm2Config parse_tpm2_config(const json_t* config);

// The protected header of a tpm2 JWE (clevis-decrypt-tpm2's checks, and the blobs decoded and unmarshalled as
// TPM2B_PUBLIC / TPM2B_PRIVATE): FormatError for anything else, without a TPM.
struct Tpm2Jwe {
    Tpm2Hash hash;
    std::string key;
    Tpm2Hash pcr_bank;  // meaningful only with PCRs
    Tpm2Pcrs pcrs;
    std::vector<std::uint8_t> jwk_pub, jwk_priv;  // marshalled TPM2B_PUBLIC / TPM2B_PRIVATE of the sealed object
};
Tpm2Jwe parse_tpm2_jwe(std::string_view jwe, const json_t* protected_header);

}  // namespace luksforge::detail
