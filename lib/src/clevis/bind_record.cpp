// bind's intent record: a keyslot-less token of type "luksforge-bind", written before bind adds its keyslot, so
// that a kill -9 between the keyslot and its token never leaves a keyslot nobody can open (issue 13).
//
// Order of bind's header writes (each one atomic):
//   1. record R (at the token id the binding will get): {"keyslot": K, "request": <digest>, "jwe": <the JWE>}
//   2. keyslot K with the fresh passphrase the JWE holds
//   3. R replaced in place by the clevis token naming K (one write: the record becomes the binding)
// A run that finds R settles it before doing anything else:
//   - K does not exist (killed before 2, or a rolled-back bind killed after removing K), or a token already
//     serves K (then K is not the bind's): R goes.
//   - K exists and no token serves it (killed before 3): the JWE in R is decrypted through its pin. When the
//     passphrase opens K, K is luksforge's own and step 3 is done now — proven through the server(s), like a
//     finished bind; when it decrypts to a passphrase that does not open K, K is someone else's (say
//     `cryptsetup luksAddKey` took the free slot after the kill) and only R goes.
//   - The server cannot be reached: R and K stay (nothing is lost: R holds the only way to K's passphrase) and
//     a later run settles them; only a rerun of the same bind says so and fails, as the bind itself would.
//     With --no-verify that rerun finishes step 3 unproven, as asked.
// Nothing in this file ever destroys a keyslot: finishing is one token write, and a keyslot whose ownership is
// not proven is left as it is.
#include "clevis/clevis_internal.hpp"

#include "util/digest.hpp"
#include "util/json_util.hpp"

#include <luksforge/error.hpp>
#include <luksforge/pin.hpp>

namespace luksforge::clevis::internal {

namespace {

using detail::JsonPtr;
using detail::json_take;

constexpr const char* bind_record_type = "luksforge-bind";

struct BindRecord {
    int token_id = -1;
    int keyslot = -1;
    std::string request;
    std::string jwe;  // compact; empty when unreadable
};

std::vector<BindRecord> bind_records(const Volume& volume) {
    std::vector<BindRecord> result;
    for (const Token& token : volume.tokens()) {
        if (token.type != bind_record_type) continue;
        BindRecord r;
        r.token_id = token.id;
        try {
            JsonPtr json = detail::json_parse(token.json, "bind record");
            const json_t* slot = json_object_get(json.get(), "keyslot");
            if (json_is_integer(slot)) r.keyslot = static_cast<int>(json_integer_value(slot));
            r.request = detail::json_string_or(json.get(), "request");
            r.jwe = token_to_compact(token.json);  // the "jwe" object has the clevis token's layout
        } catch (const FormatError&) {
            r.jwe.clear();
        }
        result.push_back(std::move(r));
    }
    return result;
}

enum class Ownership { ours, not_ours, unknown };

// Whether the record's JWE opens K: decrypted through the pin's server(s). `why` says why it is unknown.
Ownership ownership(const Volume& volume, const BindRecord& r, const PinOptions& options, std::string& why) {
    SecretBuffer recovered;
    try {
        recovered = clevis_decrypt(r.jwe, options);
    } catch (const FormatError&) {
        return Ownership::not_ours;  // an unreadable JWE can never prove anything
    } catch (const Error& e) {
        why = e.what();
        return Ownership::unknown;
    }
    return volume.test_passphrase(recovered.view(), r.keyslot) == r.keyslot ? Ownership::ours : Ownership::not_ours;
}

}  // namespace

std::string bind_request_digest(std::string_view pin, std::string_view config_json) {
    std::string request(pin);
    request += '\0';
    request.append(config_json);
    return detail::sha256_hex(request).substr(0, 16);
}

std::string bind_record_json(int keyslot, std::string_view compact_jwe, const std::string& request) {
    JsonPtr record = detail::json_parse(token_json(keyslot, compact_jwe), "clevis token");
    json_object_set_new(record.get(), "type", json_string(bind_record_type));
    json_object_set_new(record.get(), "keyslots", json_array());
    json_object_set_new(record.get(), "keyslot", json_integer(keyslot));
    json_object_set_new(record.get(), "request", json_string(request.c_str()));
    return detail::json_dump(record.get());
}

std::vector<SettledBind> settle_interrupted_binds(Volume& volume, const PinOptions& options,
                                                  const std::string* current_request, bool current_verify) {
    std::vector<SettledBind> finished;
    for (const BindRecord& r : bind_records(volume)) {
        if (r.keyslot < 0 || r.jwe.empty() || !volume.keyslot(r.keyslot) || keyslot_served(volume, r.keyslot)) {
            volume.remove_token(r.token_id);  // nothing of this bind is left without its token
            continue;
        }
        const bool same_request = current_request != nullptr && *current_request == r.request;
        std::string why;
        Verification verification = Verification::verified;
        switch (ownership(volume, r, options, why)) {
            case Ownership::not_ours:
                volume.remove_token(r.token_id);
                continue;
            case Ownership::unknown:
                if (!same_request) continue;  // left for a run that reaches the server(s)
                if (current_verify)
                    throw TangError("an interrupted bind left keyslot " + std::to_string(r.keyslot) +
                                    " and its record (token " + std::to_string(r.token_id) +
                                    "); finishing it needs the pin's server(s): " + why + "; run bind again when they answer");
                verification = Verification::skipped;
                break;
            case Ownership::ours:
                break;
        }
        volume.set_token(token_json(r.keyslot, r.jwe), r.token_id);
        SettledBind settled;
        settled.request = r.request;
        settled.result.keyslot = r.keyslot;
        settled.result.token = r.token_id;
        settled.result.verification = verification;
        settled.result.message =
            "finished an interrupted bind: keyslot " + std::to_string(r.keyslot) + " (token " +
            std::to_string(r.token_id) + ")" +
            (verification == Verification::verified
                 ? "; verified: its token decrypts through its pin (the real servers) and opens its keyslot"
                 : "; NOT verified: the server(s) could not be reached and the proof was skipped on request");
        finished.push_back(std::move(settled));
    }
    return finished;
}

std::optional<int> bind_record_for_keyslot(const Volume& volume, int keyslot) {
    for (const BindRecord& r : bind_records(volume))
        if (r.keyslot == keyslot) return r.token_id;
    return std::nullopt;
}

}  // namespace luksforge::clevis::internal
