// The seal state record: seal's progress, kept IN the LUKS2 header as a keyslot-less token of type
// "luksforge-seal", so that a rerun after a crash finishes from the step it reached. Each write is one
// atomic header write.
#include "pipeline/pipeline_internal.hpp"

namespace luksforge::detail {

namespace {

constexpr const char* seal_token_type = "luksforge-seal";

}  // namespace

std::optional<SealState> read_state(const Volume& volume) {
    for (const Token& token : volume.tokens()) {
        if (token.type != seal_token_type) continue;
        JsonPtr json = json_parse(token.json, "seal state token");
        SealState state;
        state.token = token.id;
        state.step = json_string_or(json.get(), "step");
        state.fingerprint_before = json_string_or(json.get(), "fingerprint_before");
        state.started_at = json_string_or(json.get(), "started_at");
        const json_t* pending = json_object_get(json.get(), "pending_keyslot");
        if (json_is_integer(pending)) state.pending_keyslot = static_cast<int>(json_integer_value(pending));
        std::size_t i = 0;
        const json_t* slot = nullptr;
        json_array_foreach(json_object_get(json.get(), "build_keyslots"), i, slot)
            if (json_is_integer(slot)) state.build_keyslots.push_back(static_cast<int>(json_integer_value(slot)));
        return state;
    }
    return std::nullopt;
}

// One atomic LUKS2 header write.
void write_state(Volume& volume, SealState& state) {
    JsonPtr json = json_take(json_object());
    json_object_set_new(json.get(), "type", json_string(seal_token_type));
    json_object_set_new(json.get(), "keyslots", json_array());
    json_object_set_new(json.get(), "version", json_integer(1));
    json_object_set_new(json.get(), "step", json_string(state.step.c_str()));
    json_object_set_new(json.get(), "fingerprint_before", json_string(state.fingerprint_before.c_str()));
    json_object_set_new(json.get(), "started_at", json_string(state.started_at.c_str()));
    if (state.pending_keyslot) json_object_set_new(json.get(), "pending_keyslot", json_integer(*state.pending_keyslot));
    if (!state.build_keyslots.empty()) {
        json_t* slots = json_array();
        for (int slot : state.build_keyslots) json_array_append_new(slots, json_integer(slot));
        json_object_set_new(json.get(), "build_keyslots", slots);
    }
    state.token = volume.set_token(json_dump(json.get()), state.token);
}

}  // namespace luksforge::detail
