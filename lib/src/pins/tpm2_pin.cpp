// Clevis's tpm2 pin (clevis-encrypt-tpm2 / clevis-decrypt-tpm2 of Clevis 19) over tpm2-tss ESYS instead of the
// tpm2-tools commands the scripts run. A fresh A256GCM JWK is sealed in the TPM as a keyedhash object under the
// owner-hierarchy primary key that `tpm2_createprimary -C o -g HASH -G KEY` makes (a primary key is recreated
// from its template, so nothing is stored in the TPM), optionally with a PCR policy; the JWE holds the sealed
// object's public and private blobs in its protected header and is "dir" + A256GCM with that JWK. What this
// writes, stock Clevis decrypts, and the other way round.
#include "pins/tpm2_pin.hpp"

#include "pins/pins.hpp"
#include "tpm2/esys.hpp"
#include "util/error_util.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>

#include <tss2/tss2_mu.h>
#include <tss2/tss2_rc.h>

#include <openssl/evp.h>

#include <algorithm>
#include <array>
#include <cctype>
#include <cstring>
#include <mutex>

namespace luksforge::detail {

namespace {

using namespace tpm2;

constexpr unsigned max_pcr = 23;        // tpm2-tools selects PCRs with a 3-byte bitmap (sizeofSelect = 3)
constexpr std::size_t max_pcrs = 8;     // tpm2-tools' PCR policies ("Number of PCR is limited to 8")
constexpr std::size_t content_key_bytes = 32;

// clevis-encrypt-tpm2's object attributes for the sealed JWK ("fixedtpm|fixedparent|noda|adminwithpolicy",
// plus "userwithauth" when there is no PCR policy), and tpm2_createprimary's defaults for the primary key.
constexpr TPMA_OBJECT sealed_attributes =
    TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT | TPMA_OBJECT_NODA | TPMA_OBJECT_ADMINWITHPOLICY;
constexpr TPMA_OBJECT primary_attributes = TPMA_OBJECT_FIXEDTPM | TPMA_OBJECT_FIXEDPARENT |
                                           TPMA_OBJECT_SENSITIVEDATAORIGIN | TPMA_OBJECT_USERWITHAUTH |
                                           TPMA_OBJECT_RESTRICTED | TPMA_OBJECT_DECRYPT;

constexpr std::array<Tpm2Hash, 4> hashes = {{
    {"sha1", TPM2_ALG_SHA1, TPM2_SHA1_DIGEST_SIZE},
    {"sha256", TPM2_ALG_SHA256, TPM2_SHA256_DIGEST_SIZE},
    {"sha384", TPM2_ALG_SHA384, TPM2_SHA384_DIGEST_SIZE},
    {"sha512", TPM2_ALG_SHA512, TPM2_SHA512_DIGEST_SIZE},
}};

std::string string_member(const json_t* object, const char* key, std::string_view fallback, std::string_view what) {
    const json_t* value = json_object_get(object, key);
    if (value == nullptr) return std::string(fallback);
    if (!json_is_string(value)) throw FormatError(std::string(what) + ": \"" + key + "\" must be a string");
    return std::string(json_string_value(value), json_string_length(value));
}

std::vector<std::uint8_t> decode_blob(const std::string& text, std::string_view what) {
    const SecretBuffer bytes = base64url_decode(text);  // not secret (TPM-encrypted), but that is the decoder
    if (bytes.empty()) throw FormatError(std::string("tpm2: ") + std::string(what) + " is empty");
    return {bytes.data(), bytes.data() + bytes.size()};
}

std::string encode_blob(std::span<const std::uint8_t> bytes) { return std::string(base64url_encode(bytes).view()); }

TPML_PCR_SELECTION pcr_selection(const Tpm2Hash& bank, const Tpm2Pcrs& pcrs) {
    TPML_PCR_SELECTION selection{};
    selection.count = 1;
    selection.pcrSelections[0].hash = bank.alg_id;
    selection.pcrSelections[0].sizeofSelect = 3;
    for (unsigned n : pcrs.numbers) selection.pcrSelections[0].pcrSelect[n / 8] |= static_cast<BYTE>(1u << (n % 8));
    return selection;
}

std::string pcr_list(const Tpm2Hash& bank, const Tpm2Pcrs& pcrs) { return std::string(bank.name) + ":" + pcrs.ids; }

// ---- TPM steps ---------------------------------------------------------------------------------------------

// tpm2_createprimary -C o -g HASH -G ecc|rsa: the template of tpm2-tools 5, so the same primary key (and so
// the same parent of the sealed object) comes out of the owner seed every time, for Clevis and for us.
Transient create_primary(const Esys& esys, const Tpm2Hash& hash, const std::string& key) {
    TPM2B_PUBLIC in_public{};
    TPMT_PUBLIC& area = in_public.publicArea;
    area.nameAlg = hash.alg_id;
    area.objectAttributes = primary_attributes;
    const TPMT_SYM_DEF_OBJECT aes128cfb{TPM2_ALG_AES, {.aes = 128}, {.aes = TPM2_ALG_CFB}};
    if (key == "ecc") {
        area.type = TPM2_ALG_ECC;
        area.parameters.eccDetail.symmetric = aes128cfb;
        area.parameters.eccDetail.scheme.scheme = TPM2_ALG_NULL;
        area.parameters.eccDetail.curveID = TPM2_ECC_NIST_P256;
        area.parameters.eccDetail.kdf.scheme = TPM2_ALG_NULL;
    } else {
        area.type = TPM2_ALG_RSA;
        area.parameters.rsaDetail.symmetric = aes128cfb;
        area.parameters.rsaDetail.scheme.scheme = TPM2_ALG_NULL;
        area.parameters.rsaDetail.keyBits = 2048;
        area.parameters.rsaDetail.exponent = 0;
    }
    const TPM2B_SENSITIVE_CREATE sensitive{};
    const TPM2B_DATA outside_info{};
    const TPML_PCR_SELECTION creation_pcr{};
    ESYS_TR handle = ESYS_TR_NONE;
    check_tss(tss2().Esys_CreatePrimary(esys.native_handle(), ESYS_TR_RH_OWNER, ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                        ESYS_TR_NONE, &sensitive, &in_public, &outside_info, &creation_pcr, &handle,
                                        nullptr, nullptr, nullptr, nullptr),
              "tpm2: creating the primary key (owner hierarchy, " + std::string(hash.name) + ", " + key + ")");
    return Transient(esys.native_handle(), handle);
}

Transient start_session(const Esys& esys, TPM2_SE type, const Tpm2Hash& hash) {
    const TPMT_SYM_DEF no_encryption{TPM2_ALG_NULL, {}, {}};
    ESYS_TR session = ESYS_TR_NONE;
    check_tss(tss2().Esys_StartAuthSession(esys.native_handle(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE,
                                           ESYS_TR_NONE, nullptr, type, &no_encryption, hash.alg_id, &session),
              type == TPM2_SE_TRIAL ? "tpm2: starting a trial policy session" : "tpm2: starting a policy session");
    Transient owned(esys.native_handle(), session);
    // Kept open after each use, so it is flushed exactly once, by `owned`.
    check_tss(tss2().Esys_TRSess_SetAttributes(esys.native_handle(), session, TPMA_SESSION_CONTINUESESSION,
                                               TPMA_SESSION_CONTINUESESSION),
              "tpm2: setting the session's attributes");
    return owned;
}

// tpm2_pcrread BANK:IDS -o FILE: the selected PCRs' values, concatenated in PCR order. The TPM answers at most
// eight digests a call, so ask again for what is left. A bank or PCR the TPM does not have is a bad config.
std::vector<std::uint8_t> read_pcrs(const Esys& esys, const Tpm2Hash& bank, const Tpm2Pcrs& pcrs) {
    TPML_PCR_SELECTION remaining = pcr_selection(bank, pcrs);
    std::vector<std::uint8_t> values;
    for (std::size_t round = 0; round < pcrs.numbers.size(); ++round) {
        TPML_PCR_SELECTION* out_raw = nullptr;
        TPML_DIGEST* values_raw = nullptr;
        check_tss(tss2().Esys_PCR_Read(esys.native_handle(), ESYS_TR_NONE, ESYS_TR_NONE, ESYS_TR_NONE, &remaining,
                                       nullptr, &out_raw, &values_raw),
                  "tpm2: reading PCRs " + pcr_list(bank, pcrs));
        EsysPtr<TPML_PCR_SELECTION> out(out_raw);
        EsysPtr<TPML_DIGEST> digests(values_raw);
        if (digests->count == 0) break;
        for (UINT32 i = 0; i < digests->count; ++i) {
            if (digests->digests[i].size != bank.digest_size)
                throw TpmError("tpm2: the TPM returned a PCR value of the wrong size for " + std::string(bank.name), EIO);
            values.insert(values.end(), digests->digests[i].buffer, digests->digests[i].buffer + digests->digests[i].size);
        }
        for (UINT32 s = 0; s < out->count; ++s) {
            if (out->pcrSelections[s].hash != bank.alg_id) continue;
            for (int b = 0; b < 3; ++b) remaining.pcrSelections[0].pcrSelect[b] &= ~out->pcrSelections[s].pcrSelect[b];
        }
    }
    if (values.size() != pcrs.numbers.size() * bank.digest_size)
        throw FormatError("tpm2: this TPM has no PCR bank " + std::string(bank.name) + " with PCRs " + pcrs.ids +
                          " (is the bank allocated? `tpm2_pcrread` lists the active banks)");
    return values;
}

// tpm2_createpolicy -g HASH --policy-pcr -l BANK:IDS -f VALUES: PolicyPCR in a trial session with the digest of
// the PCR values (hashed with the session's algorithm, as tpm2-tools does), and the resulting policy digest.
TPM2B_DIGEST pcr_policy_digest(const Esys& esys, const Tpm2Config& config) {
    // Read even with a given pcr_digest, as clevis-encrypt-tpm2's validate_pcrs does: a bank this TPM does not
    // have would make a binding that never unseals.
    const std::vector<std::uint8_t> current = read_pcrs(esys, config.pcr_bank, config.pcrs);
    const std::vector<std::uint8_t>& values = config.pcr_digest.empty() ? current : config.pcr_digest;
    TPM2B_DIGEST pcr_digest{};
    unsigned int length = 0;
    const EVP_MD* md = EVP_get_digestbyname(std::string(config.hash.name).c_str());
    if (md == nullptr || EVP_Digest(values.data(), values.size(), pcr_digest.buffer, &length, md, nullptr) != 1 ||
        length != config.hash.digest_size)
        throw Error(EIO, "tpm2: cannot hash the PCR values with " + std::string(config.hash.name));
    pcr_digest.size = static_cast<UINT16>(length);

    Transient session = start_session(esys, TPM2_SE_TRIAL, config.hash);
    const TPML_PCR_SELECTION selection = pcr_selection(config.pcr_bank, config.pcrs);
    check_tss(tss2().Esys_PolicyPCR(esys.native_handle(), session.native_handle(), ESYS_TR_NONE, ESYS_TR_NONE,
                                    ESYS_TR_NONE, &pcr_digest, &selection),
              "tpm2: building the PCR policy for " + pcr_list(config.pcr_bank, config.pcrs));
    TPM2B_DIGEST* digest_raw = nullptr;
    check_tss(tss2().Esys_PolicyGetDigest(esys.native_handle(), session.native_handle(), ESYS_TR_NONE, ESYS_TR_NONE,
                                          ESYS_TR_NONE, &digest_raw),
              "tpm2: reading the PCR policy digest");
    EsysPtr<TPM2B_DIGEST> digest(digest_raw);
    return *digest;
}

struct SealedBlobs {
    std::vector<std::uint8_t> pub, priv;
};

template <class T, class Marshal>
std::vector<std::uint8_t> marshal(const T& value, Marshal marshal_fn, std::string_view what) {
    std::vector<std::uint8_t> out(sizeof(T) + 2);
    size_t offset = 0;
    check_tss(marshal_fn(&value, out.data(), out.size(), &offset), "tpm2: marshalling the " + std::string(what));
    out.resize(offset);
    return out;
}

// tpm2_create -g HASH -C PRIMARY -a ATTRIBUTES [-L POLICY] -i- <<< "$jwk": a keyedhash object holding `data`.
SealedBlobs create_sealed(const Esys& esys, const Transient& primary, const Tpm2Config& config,
                          const TPM2B_DIGEST& policy, const SecretBuffer& data) {
    TPM2B_PUBLIC in_public{};
    TPMT_PUBLIC& area = in_public.publicArea;
    area.type = TPM2_ALG_KEYEDHASH;
    area.nameAlg = config.hash.alg_id;
    area.objectAttributes = sealed_attributes | (config.pcrs.empty() ? TPMA_OBJECT_USERWITHAUTH : 0);
    area.authPolicy = policy;
    area.parameters.keyedHashDetail.scheme.scheme = TPM2_ALG_NULL;

    struct WipedSensitive {
        TPM2B_SENSITIVE_CREATE value{};
        ~WipedSensitive() noexcept { explicit_bzero(&value, sizeof value); }
    } sensitive;
    if (data.size() > sizeof sensitive.value.sensitive.data.buffer)
        throw Error(EINVAL, "tpm2: the sealed key is larger than a TPM2B_SENSITIVE_DATA");
    std::memcpy(sensitive.value.sensitive.data.buffer, data.data(), data.size());
    sensitive.value.sensitive.data.size = static_cast<UINT16>(data.size());

    const TPM2B_DATA outside_info{};
    const TPML_PCR_SELECTION creation_pcr{};
    TPM2B_PRIVATE* private_raw = nullptr;
    TPM2B_PUBLIC* public_raw = nullptr;
    check_tss(tss2().Esys_Create(esys.native_handle(), primary.native_handle(), ESYS_TR_PASSWORD, ESYS_TR_NONE,
                                 ESYS_TR_NONE, &sensitive.value, &in_public, &outside_info, &creation_pcr, &private_raw,
                                 &public_raw, nullptr, nullptr, nullptr),
              "tpm2: sealing the key in the TPM");
    EsysPtr<TPM2B_PRIVATE> out_private(private_raw);
    EsysPtr<TPM2B_PUBLIC> out_public(public_raw);
    return {marshal(*out_public, tss2().Tss2_MU_TPM2B_PUBLIC_Marshal, "sealed object's public area"),
            marshal(*out_private, tss2().Tss2_MU_TPM2B_PRIVATE_Marshal, "sealed object's private area")};
}

template <class T, class Unmarshal>
T unmarshal(const std::vector<std::uint8_t>& bytes, Unmarshal unmarshal_fn, std::string_view what) {
    T value{};
    size_t offset = 0;
    if (unmarshal_fn(bytes.data(), bytes.size(), &offset, &value) != TSS2_RC_SUCCESS || offset != bytes.size())
        throw FormatError("tpm2: " + std::string(what) + " is not a marshalled " +
                          (sizeof(T) == sizeof(TPM2B_PUBLIC) ? "TPM2B_PUBLIC" : "TPM2B_PRIVATE"));
    return value;
}

// tpm2_load + tpm2_unseal [-p pcr:BANK:IDS]: the sealed data, through a policy session that asserts the PCRs'
// current values when the object is bound to PCRs.
SecretBuffer unseal(const Esys& esys, const Transient& primary, const Tpm2Jwe& jwe) {
    const TPM2B_PUBLIC in_public =
        unmarshal<TPM2B_PUBLIC>(jwe.jwk_pub, tss2().Tss2_MU_TPM2B_PUBLIC_Unmarshal, "jwk_pub");
    const TPM2B_PRIVATE in_private =
        unmarshal<TPM2B_PRIVATE>(jwe.jwk_priv, tss2().Tss2_MU_TPM2B_PRIVATE_Unmarshal, "jwk_priv");
    ESYS_TR object_handle = ESYS_TR_NONE;
    const TSS2_RC loaded = tss2().Esys_Load(esys.native_handle(), primary.native_handle(), ESYS_TR_PASSWORD,
                                            ESYS_TR_NONE, ESYS_TR_NONE, &in_private, &in_public, &object_handle);
    if (loaded != TSS2_RC_SUCCESS) {
        const TSS2_RC number = tpm_error_number(loaded);
        if (number != 0 && number != TPM2_RC_OBJECT_MEMORY && number != TPM2_RC_SESSION_MEMORY)
            throw AuthError(
                "tpm2: this TPM cannot load the sealed key: it was made by another TPM, or the owner "
                "hierarchy was cleared since (" +
                std::string(tss2().Tss2_RC_Decode(loaded)) + ")");
        throw_tss(loaded, "tpm2: loading the sealed key");
    }
    const Transient object(esys.native_handle(), object_handle);

    Transient session;
    ESYS_TR auth = ESYS_TR_PASSWORD;
    if (!jwe.pcrs.empty()) {
        session = start_session(esys, TPM2_SE_POLICY, jwe.hash);
        const TPML_PCR_SELECTION selection = pcr_selection(jwe.pcr_bank, jwe.pcrs);
        const TPM2B_DIGEST current{};  // empty: the TPM uses the PCRs' current values
        check_tss(tss2().Esys_PolicyPCR(esys.native_handle(), session.native_handle(), ESYS_TR_NONE, ESYS_TR_NONE,
                                        ESYS_TR_NONE, &current, &selection),
                  "tpm2: asserting PCRs " + pcr_list(jwe.pcr_bank, jwe.pcrs));
        auth = session.native_handle();
    }
    TPM2B_SENSITIVE_DATA* data_raw = nullptr;
    const TSS2_RC rc =
        tss2().Esys_Unseal(esys.native_handle(), object.native_handle(), auth, ESYS_TR_NONE, ESYS_TR_NONE, &data_raw);
    EsysSecretPtr<TPM2B_SENSITIVE_DATA> data(data_raw);
    if (rc != TSS2_RC_SUCCESS) {
        if (!jwe.pcrs.empty() && tpm_error_number(rc) == TPM2_RC_POLICY_FAIL)
            throw PcrMismatchError("tpm2: the TPM refuses to unseal: PCRs " + pcr_list(jwe.pcr_bank, jwe.pcrs) +
                                   " are not what this binding was sealed to (changed since it was made)");
        throw_tss(rc, "tpm2: unsealing the key");
    }
    return SecretBuffer(data->buffer, data->size);
}

// ---- the sealed JWK ----------------------------------------------------------------------------------------

// `jose jwk gen -i '{"alg":"A256GCM"}'` as the scripts feed it to tpm2_create through a here-string: compact,
// sorted keys, and a trailing newline. Built in a SecretBuffer so the key never passes through jansson.
SecretBuffer sealed_jwk(const SecretBuffer& key) {
    const SecretBuffer k = base64url_encode(key.bytes());
    SecretBuffer text;
    auto add = [&](std::string_view piece) { text.append(piece.data(), piece.size()); };
    add(R"({"alg":"A256GCM","k":")");
    text.append(k.data(), k.size());
    add(R"(","key_ops":["encrypt","decrypt"],"kty":"oct"})");
    add("\n");
    return text;
}

// The "k" member of the unsealed JWK (any JSON spacing), decoded: the JWE's content key.
SecretBuffer content_key(const SecretBuffer& jwk) {
    const std::string_view text = jwk.view();
    for (std::size_t at = text.find("\"k\""); at != std::string_view::npos; at = text.find("\"k\"", at + 1)) {
        std::size_t i = at + 3;
        auto skip_space = [&] { while (i < text.size() && std::isspace(static_cast<unsigned char>(text[i]))) ++i; };
        skip_space();
        if (i >= text.size() || text[i] != ':') continue;  // "k" as a value, not a member name
        ++i;
        skip_space();
        if (i >= text.size() || text[i] != '"') break;
        const std::size_t end = text.find('"', i + 1);
        if (end == std::string_view::npos) break;
        SecretBuffer key = base64url_decode(text.substr(i + 1, end - i - 1));
        if (key.size() != content_key_bytes)
            throw FormatError("tpm2: the unsealed JWK's key has " + std::to_string(key.size()) +
                              " bytes, A256GCM needs 32");
        return key;
    }
    throw FormatError("tpm2: the unsealed data is not a JWK with a \"k\" member");
}

}  // namespace

// ---- parsing -----------------------------------------------------------------------------------------------

Tpm2Hash tpm2_hash(std::string_view name, std::string_view what) {
    for (const Tpm2Hash& hash : hashes)
        if (hash.name == name) return hash;
    throw FormatError("tpm2: unsupported " + std::string(what) + " \"" + excerpt(name, 32) +
                      "\" (supported: sha1, sha256, sha384, sha512)");
}

Tpm2Pcrs parse_pcr_ids(const json_t* value) {
    // clevis-encrypt-tpm2 strips every space from the config before reading pcr_ids, and joins an array's items
    // with commas; the result is what it writes into the header.
    std::string joined;
    if (json_is_string(value)) {
        joined.assign(json_string_value(value), json_string_length(value));
    } else if (json_is_array(value)) {
        std::size_t index = 0;
        const json_t* item = nullptr;
        json_array_foreach(value, index, item) {
            if (index > 0) joined += ',';
            if (json_is_string(item)) joined.append(json_string_value(item), json_string_length(item));
            else if (json_is_integer(item)) joined += std::to_string(json_integer_value(item));
            else throw FormatError("tpm2: \"pcr_ids\" items must be PCR numbers or strings");
        }
    } else {
        throw FormatError("tpm2: \"pcr_ids\" must be a string (\"0,7\") or an array of PCR numbers");
    }
    joined.erase(std::remove_if(joined.begin(), joined.end(), [](unsigned char c) { return std::isspace(c); }),
                 joined.end());
    Tpm2Pcrs pcrs;
    pcrs.ids = joined;
    if (joined.empty()) return pcrs;  // "" binds to no PCRs, as in Clevis
    std::size_t start = 0;
    for (;;) {
        const std::size_t comma = joined.find(',', start);
        const std::string item = joined.substr(start, comma == std::string::npos ? std::string::npos : comma - start);
        if (item.empty() || item.size() > 2 || !std::all_of(item.begin(), item.end(), [](unsigned char c) { return std::isdigit(c); }) ||
            std::stoul(item) > max_pcr)
            throw FormatError("tpm2: \"pcr_ids\" \"" + excerpt(joined, 80) + "\": \"" + excerpt(item, 16) +
                              "\" is not a PCR number from 0 to 23");
        const unsigned n = static_cast<unsigned>(std::stoul(item));
        if (std::find(pcrs.numbers.begin(), pcrs.numbers.end(), n) != pcrs.numbers.end())
            throw FormatError("tpm2: \"pcr_ids\" names PCR " + item + " twice");
        pcrs.numbers.push_back(n);
        if (pcrs.numbers.size() > max_pcrs)
            throw FormatError("tpm2: \"pcr_ids\" \"" + excerpt(joined, 80) + "\" names more than " +
                              std::to_string(max_pcrs) + " PCRs, which Clevis's tpm2-tools cannot bind or unseal");
        if (comma == std::string::npos) break;
        start = comma + 1;
    }
    return pcrs;
}

Tpm2Config parse_tpm2_config(const json_t* config) {
    if (!json_is_object(config)) throw FormatError("tpm2: the configuration must be a JSON object");
    const char* name = nullptr;
    json_t* value = nullptr;
    json_object_foreach(const_cast<json_t*>(config), name, value) {
        const std::string_view member = name;
        if (member == "hash" || member == "key" || member == "pcr_bank" || member == "pcr_ids" ||
            member == "pcr_digest")
            continue;
        if (member.rfind("policy_", 0) == 0)
            throw FormatError("tpm2: \"" + excerpt(member, 40) +
                              "\" (signed policies) is not supported by Clevis 19's tpm2 pin, so not here either");
        throw FormatError("tpm2: unknown configuration member \"" + excerpt(member, 40) +
                          "\" (known: hash, key, pcr_bank, pcr_ids, pcr_digest)");
    }
    Tpm2Config out;
    out.hash = tpm2_hash(string_member(config, "hash", "sha256", "tpm2"), "hash");
    out.key = string_member(config, "key", "ecc", "tpm2");
    if (out.key != "ecc" && out.key != "rsa")
        throw FormatError("tpm2: unsupported key \"" + excerpt(out.key, 32) + "\" (supported: ecc, rsa)");
    out.pcr_bank = tpm2_hash(string_member(config, "pcr_bank", "sha1", "tpm2"), "pcr_bank");
    if (const json_t* ids = json_object_get(config, "pcr_ids")) out.pcrs = parse_pcr_ids(ids);
    const std::string digest = string_member(config, "pcr_digest", "", "tpm2");
    if (!digest.empty()) {
        if (out.pcrs.empty()) throw FormatError("tpm2: \"pcr_digest\" needs \"pcr_ids\" (the PCRs it holds values of)");
        const SecretBuffer bytes = base64url_decode(digest);
        out.pcr_digest.assign(bytes.data(), bytes.data() + bytes.size());
        const std::size_t expected = out.pcrs.numbers.size() * out.pcr_bank.digest_size;
        if (out.pcr_digest.size() != expected)
            throw FormatError("tpm2: \"pcr_digest\" holds " + std::to_string(out.pcr_digest.size()) +
                              " bytes; " + std::to_string(out.pcrs.numbers.size()) + " " +
                              std::string(out.pcr_bank.name) + " PCR values are " + std::to_string(expected));
    }
    return out;
}

Tpm2Jwe parse_tpm2_jwe(std::string_view jwe, const json_t* protected_header) {
    (void)jwe;
    if (json_string_or(protected_header, "alg") != "dir" || json_string_or(protected_header, "enc") != "A256GCM")
        throw FormatError("tpm2: the JWE must be \"dir\" + \"A256GCM\"");
    const json_t* tpm2 = json_object_get(json_object_get(protected_header, "clevis"), "tpm2");
    if (!json_is_object(tpm2)) throw FormatError("tpm2: the JWE header has no clevis.tpm2 object");
    // clevis-decrypt-tpm2: hash, key, jwk_pub and jwk_priv are required; pcr_bank goes with pcr_ids.
    Tpm2Jwe out;
    out.hash = tpm2_hash(json_require_string(tpm2, "hash", "tpm2 JWE header"), "hash");
    out.key = json_require_string(tpm2, "key", "tpm2 JWE header");
    if (out.key != "ecc" && out.key != "rsa")
        throw FormatError("tpm2: the JWE's key \"" + excerpt(out.key, 32) + "\" is not ecc or rsa");
    out.jwk_pub = decode_blob(json_require_string(tpm2, "jwk_pub", "tpm2 JWE header"), "jwk_pub");
    out.jwk_priv = decode_blob(json_require_string(tpm2, "jwk_priv", "tpm2 JWE header"), "jwk_priv");
    if (const json_t* ids = json_object_get(tpm2, "pcr_ids")) {
        if (!json_is_string(ids)) throw FormatError("tpm2: the JWE's pcr_ids is not a string");
        out.pcrs = parse_pcr_ids(ids);
    }
    if (!out.pcrs.empty())
        out.pcr_bank = tpm2_hash(json_require_string(tpm2, "pcr_bank", "tpm2 JWE header (with pcr_ids)"), "pcr_bank");
    // The blobs must be what tpm2_create wrote (the TPM checks the rest): refused here, before any TPM is used.
    (void)unmarshal<TPM2B_PUBLIC>(out.jwk_pub, tss2().Tss2_MU_TPM2B_PUBLIC_Unmarshal, "jwk_pub");
    (void)unmarshal<TPM2B_PRIVATE>(out.jwk_priv, tss2().Tss2_MU_TPM2B_PRIVATE_Unmarshal, "jwk_priv");
    return out;
}

// ---- the pin -----------------------------------------------------------------------------------------------

std::string tpm2_encrypt(const json_t* config, std::span<const std::uint8_t> secret) {
    const Tpm2Config parsed = parse_tpm2_config(config);  // every config error before the TPM is touched
    const SecretBuffer key = random_secret(content_key_bytes);
    SealedBlobs blobs;
    {
        std::lock_guard lock(tpm_mutex());
        const Esys esys(clevis_tcti_config());
        const Transient primary = create_primary(esys, parsed.hash, parsed.key);
        const TPM2B_DIGEST policy = parsed.pcrs.empty() ? TPM2B_DIGEST{} : pcr_policy_digest(esys, parsed);
        blobs = create_sealed(esys, primary, parsed, policy, sealed_jwk(key));
    }
    // jose's members in sorted order, as `jose jwe enc` writes clevis-encrypt-tpm2's template.
    JsonPtr tpm2 = json_take(json_object());
    json_object_set_new(tpm2.get(), "hash", json_string(std::string(parsed.hash.name).c_str()));
    json_object_set_new(tpm2.get(), "jwk_priv", json_string(encode_blob(blobs.priv).c_str()));
    json_object_set_new(tpm2.get(), "jwk_pub", json_string(encode_blob(blobs.pub).c_str()));
    json_object_set_new(tpm2.get(), "key", json_string(parsed.key.c_str()));
    if (!parsed.pcrs.empty()) {
        json_object_set_new(tpm2.get(), "pcr_bank", json_string(std::string(parsed.pcr_bank.name).c_str()));
        json_object_set_new(tpm2.get(), "pcr_ids", json_string(parsed.pcrs.ids.c_str()));
    }
    JsonPtr header = json_take(json_pack("{s:s,s:{s:s,s:O},s:s}", "alg", "dir", "clevis", "pin", "tpm2", "tpm2",
                                         tpm2.get(), "enc", "A256GCM"));
    if (!header) throw FormatError("tpm2: cannot build the JWE header");
    return dir_a256gcm_encrypt(key, header.get(), secret);
}

SecretBuffer tpm2_decrypt(std::string_view jwe, const json_t* protected_header) {
    const Tpm2Jwe parsed = parse_tpm2_jwe(jwe, protected_header);
    SecretBuffer jwk;
    {
        std::lock_guard lock(tpm_mutex());
        const Esys esys(clevis_tcti_config());
        const Transient primary = create_primary(esys, parsed.hash, parsed.key);
        jwk = unseal(esys, primary, parsed);
    }
    return dir_a256gcm_decrypt(content_key(jwk), jwe);
}

}  // namespace luksforge::detail
