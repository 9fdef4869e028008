// Volume tokens: reading, storing, removing and (un)assigning LUKS2 token JSON.
#include "luks/volume_internal.hpp"

#include <cstdlib>

namespace luksforge {

using detail::check_crypt;
using detail::cryptsetup_guard;
using detail::JsonPtr;

namespace {

Token token_from_json(int id, const char* json_text) {
    Token token;
    token.id = id;
    token.json = json_text;
    JsonPtr json = detail::json_parse(token.json, "token " + std::to_string(id));
    token.type = detail::json_string_or(json.get(), "type");
    std::size_t i = 0;
    json_t* item = nullptr;
    json_array_foreach(json_object_get(json.get(), "keyslots"), i, item) {
        if (json_is_string(item)) token.keyslots.push_back(std::atoi(json_string_value(item)));
    }
    return token;
}

}  // namespace

std::optional<Token> Volume::token(int id) const {
    auto guard = cryptsetup_guard();
    const char* json = nullptr;
    const int rc = crypt_token_json_get(impl_->cd.get(), id, &json);
    detail::clear_crypt_error();
    if (rc < 0 || json == nullptr) return std::nullopt;
    return token_from_json(id, json);
}

std::vector<Token> Volume::tokens() const {
    auto guard = cryptsetup_guard();
    std::vector<Token> result;
    if (luks_version() != 2) return result;
    const int max = crypt_token_max(CRYPT_LUKS2);
    for (int id = 0; id < max; ++id) {
        if (auto t = token(id)) result.push_back(std::move(*t));
    }
    return result;
}

int Volume::set_token(std::string_view json, int id) {
    JsonPtr parsed = detail::json_parse(json, "token JSON");
    if (!json_is_object(parsed.get()) || !json_is_string(json_object_get(parsed.get(), "type")) ||
        !json_is_array(json_object_get(parsed.get(), "keyslots")))
        throw FormatError("token JSON must be an object with a string \"type\" and an array \"keyslots\"");
    const std::string text(json);
    auto guard = cryptsetup_guard();
    detail::clear_crypt_error();
    return check_crypt(crypt_token_json_set(impl_->cd.get(), id < 0 ? CRYPT_ANY_TOKEN : id, text.c_str()),
                       "cannot store token in " + impl_->path.string());
}

void Volume::remove_token(int id) {
    auto guard = cryptsetup_guard();
    if (!token(id)) throw NotFoundError("token " + std::to_string(id) + " does not exist in " + impl_->path.string());
    detail::clear_crypt_error();
    check_crypt(crypt_token_json_set(impl_->cd.get(), id, nullptr), "cannot remove token " + std::to_string(id));
}

void Volume::assign_token(int token_id, int keyslot_id) {
    auto guard = cryptsetup_guard();
    if (!token(token_id)) throw NotFoundError("token " + std::to_string(token_id) + " does not exist");
    if (!keyslot(keyslot_id)) throw NotFoundError("keyslot " + std::to_string(keyslot_id) + " does not exist");
    detail::clear_crypt_error();
    check_crypt(crypt_token_assign_keyslot(impl_->cd.get(), token_id, keyslot_id),
                "cannot assign token " + std::to_string(token_id) + " to keyslot " + std::to_string(keyslot_id));
}

void Volume::unassign_token(int token_id, int keyslot_id) {
    auto guard = cryptsetup_guard();
    if (!token(token_id)) throw NotFoundError("token " + std::to_string(token_id) + " does not exist");
    detail::clear_crypt_error();
    check_crypt(crypt_token_unassign_keyslot(impl_->cd.get(), token_id, keyslot_id),
                "cannot unassign token " + std::to_string(token_id) + " from keyslot " + std::to_string(keyslot_id));
}

}  // namespace luksforge
