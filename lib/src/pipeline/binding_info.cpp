// Reading a binding back from its token: the Tang servers a Clevis JWE depends on (for reports) and the pin
// configuration that binds to the same servers and advertisements (for stamping instances of a base).
#include "pipeline/pipeline_internal.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>
#include <luksforge/secret.hpp>
#include <luksforge/tang.hpp>

#include <algorithm>
#include <cstring>

namespace luksforge::detail {

namespace {

JsonPtr protected_header(std::string_view compact_jwe) {
    std::size_t dot = compact_jwe.find('.');
    if (dot == std::string_view::npos) throw FormatError("malformed JWE: no protected header");
    SecretBuffer decoded = base64url_decode(compact_jwe.substr(0, dot));
    return detail::json_parse(decoded.view(), "JWE protected header");
}

const json_t* clevis_member(const json_t* header, std::string& pin) {
    const json_t* clevis = json_object_get(header, "clevis");
    pin = detail::json_string_or(clevis, "pin");
    if (pin.empty()) throw FormatError("JWE without a clevis pin");
    return json_object_get(clevis, pin.c_str());
}

}  // namespace

void collect_servers(std::string_view compact_jwe, std::vector<TangServer>& servers, int depth) {
    if (depth > 8) throw FormatError("sss pins nested too deeply");
    JsonPtr header = protected_header(compact_jwe);
    std::string pin;
    const json_t* config = clevis_member(header.get(), pin);
    if (pin == "tang") {
        TangServer server;
        server.url = json_string_or(config, "url");
        server.exchange_thumbprint = json_string_or(header.get(), "kid");
        const json_t* keys = json_object_get(json_object_get(config, "adv"), "keys");
        std::size_t i = 0;
        const json_t* key = nullptr;
        json_array_foreach(keys, i, key) {
            const json_t* ops = json_object_get(key, "key_ops");
            std::size_t j = 0;
            const json_t* op = nullptr;
            bool verify = false;
            json_array_foreach(ops, j, op) verify = verify || (json_is_string(op) && std::strcmp(json_string_value(op), "verify") == 0);
            if (verify) server.signing_thumbprints.push_back(tang::jwk_thumbprint(json_dump(key), "S256"));
        }
        servers.push_back(std::move(server));
    } else if (pin == "sss") {
        const json_t* children = json_object_get(config, "jwe");
        std::size_t i = 0;
        const json_t* child = nullptr;
        json_array_foreach(children, i, child) {
            if (json_is_string(child)) collect_servers(json_string_value(child), servers, depth + 1);
        }
    }
}

// The configuration that binds to the same servers and advertisements as `compact_jwe` did: tang as
// {"url":..., "adv":{keys}} (the advertisement the base was bound with, trusted as Clevis trusts an offline
// one), sss rebuilt from its children.
std::pair<std::string, JsonPtr> config_from_jwe(std::string_view compact_jwe, int depth) {
    if (depth > 8) throw FormatError("sss pins nested too deeply");
    JsonPtr header = protected_header(compact_jwe);
    std::string pin;
    const json_t* config = clevis_member(header.get(), pin);
    JsonPtr out = json_take(json_object());
    if (pin == "tang") {
        json_object_set_new(out.get(), "url", json_string(json_string_or(config, "url").c_str()));
        const json_t* adv = json_object_get(config, "adv");
        if (!json_is_object(adv)) throw FormatError("tang JWE without an advertisement");
        json_object_set_new(out.get(), "adv", json_deep_copy(adv));
    } else if (pin == "sss") {
        json_object_set_new(out.get(), "t", json_integer(json_integer_value(json_object_get(config, "t"))));
        json_t* pins = json_object();
        json_object_set_new(out.get(), "pins", pins);
        std::size_t i = 0;
        const json_t* child = nullptr;
        json_array_foreach(json_object_get(config, "jwe"), i, child) {
            if (!json_is_string(child)) throw FormatError("sss JWE with a non-string child");
            auto [child_pin, child_config] = config_from_jwe(json_string_value(child), depth + 1);
            json_t* list = json_object_get(pins, child_pin.c_str());
            if (list == nullptr) {
                list = json_array();
                json_object_set_new(pins, child_pin.c_str(), list);
            }
            json_array_append(list, child_config.get());
        }
    } else {
        throw FormatError("cannot rebuild a binding of pin \"" + pin + "\"; pass a policy");
    }
    return {pin, std::move(out)};
}

std::optional<Token> clevis_token_for(const Volume& volume, int keyslot) {
    for (auto& token : volume.tokens())
        if (token.type == "clevis" && std::find(token.keyslots.begin(), token.keyslots.end(), keyslot) != token.keyslots.end())
            return token;
    return std::nullopt;
}

void fill_binding_report(SealReport& report, const Volume& volume, int keyslot) {
    report.keyslot = keyslot;
    if (auto token = clevis_token_for(volume, keyslot)) {
        report.token = token->id;
        std::string compact = clevis::token_to_compact(token->json);
        auto [pin, config] = clevis::describe_jwe(compact);
        report.pin = pin;
        report.pin_config = config;
        report.servers.clear();
        detail::collect_servers(compact, report.servers);
    }
}

}  // namespace luksforge::detail
