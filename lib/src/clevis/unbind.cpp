// unbind: remove a Clevis binding — its keyslot first, then its token — so that a kill -9 in between leaves
// only a token naming no keyslot (harmless; pruned by the rerun, as Clevis prunes such tokens before every
// bind), never a keyslot whose passphrase nobody can recover any more.
#include "clevis/clevis_internal.hpp"

#include <luksforge/clevis.hpp>
#include <luksforge/error.hpp>

namespace luksforge::clevis {

using namespace clevis::internal;

std::vector<std::string> unbind_crash_points() { return {"unbind-keyslot-removed"}; }

void unbind(Volume& volume, int keyslot, bool force) {
    if (volume.luks_version() != 2) throw FormatError(internal::luks1_refusal(volume));
    // An interrupted bind is finished first when its server answers (then it is unbound like any other).
    settle_interrupted_binds(volume, {});
    const std::optional<Token> token = token_for_keyslot(volume, keyslot);
    if (!token) {
        // An interrupted bind of this very keyslot that could not be settled (server unreachable): roll it back,
        // the keyslot first, as asked.
        if (const std::optional<int> record = bind_record_for_keyslot(volume, keyslot); record && volume.keyslot(keyslot)) {
            if (volume.keyslots().size() <= 1 && !force)
                throw FormatError("keyslot " + std::to_string(keyslot) +
                                  " is the last keyslot: removing it would make the volume unopenable (use --force)");
            volume.remove_keyslot(keyslot);
            crash_point("unbind-keyslot-removed");
            volume.remove_token(*record);
            return;
        }
        // A rerun after a kill between the two steps: the keyslot is gone and its token names no keyslot.
        if (!volume.keyslot(keyslot) && !prune_orphaned_tokens(volume).empty()) return;
        throw NotFoundError("no Clevis token is bound to keyslot " + std::to_string(keyslot) + " of " +
                            volume.path().string());
    }
    if (volume.keyslot(keyslot)) {
        if (volume.keyslots().size() <= 1 && !force)
            throw FormatError("keyslot " + std::to_string(keyslot) +
                              " is the last keyslot: removing it would make the volume unopenable (use --force)");
        // libcryptsetup unassigns the keyslot from every token while destroying it (one header write).
        volume.remove_keyslot(keyslot);
        crash_point("unbind-keyslot-removed");
    }
    if (volume.token(token->id)) volume.remove_token(token->id);
    prune_orphaned_tokens(volume);
}

}  // namespace luksforge::clevis
