#include "clevis/pin_round_trips.hpp"

#include "clevis/clevis_internal.hpp"

#include <luksforge/error.hpp>
#include <luksforge/luks.hpp>

namespace luksforge::clevis::internal {

namespace {

// The caller's cancellation flag when it brought one (it decides), else one of ours to stop early.
std::shared_ptr<std::atomic<bool>> cancel_flag_for(PinOptions& options) {
    if (options.network.cancel) return nullptr;
    options.network.cancel = std::make_shared<std::atomic<bool>>(false);
    return options.network.cancel;
}

template <typename T>
void cancel_and_wait(const std::shared_ptr<std::atomic<bool>>& cancel, std::future<T>& pending) noexcept {
    if (!pending.valid()) return;
    if (cancel) cancel->store(true);
    pending.wait();
}

}  // namespace

PendingEncryption::PendingEncryption(std::string_view pin, std::string_view config_json, const PinOptions& options)
    : passphrase_(new_slot_passphrase()), pin_(pin), config_(config_json), options_(options),
      own_cancel_(cancel_flag_for(options_)) {
    jwe_ = std::async(std::launch::async, [this] { return clevis_encrypt(pin_, config_, passphrase_.bytes(), options_); });
}

PendingEncryption::~PendingEncryption() noexcept { cancel_and_wait(own_cancel_, jwe_); }

std::string PendingEncryption::get() { return jwe_.get(); }

PendingProof::PendingProof(std::string compact_jwe, const PinOptions& options)
    : jwe_(std::move(compact_jwe)), options_(options), own_cancel_(cancel_flag_for(options_)) {
    recovered_ = std::async(std::launch::async, [this] { return clevis_decrypt(jwe_, options_); });
}

PendingProof::~PendingProof() noexcept { cancel_and_wait(own_cancel_, recovered_); }

void PendingProof::finish(const Volume& volume, std::string_view stored_jwe, const SecretBuffer& passphrase,
                          int keyslot) {
    if (stored_jwe != jwe_) {
        cancel_and_wait(own_cancel_, recovered_);
        throw AuthError("verification failed: the stored token is not the JWE that was sent through the pin");
    }
    // Opening the keyslot (its PBKDF and anti-forensic merge) overlaps the recovery still in flight.
    if (volume.test_passphrase(passphrase.view(), keyslot) != keyslot) {
        cancel_and_wait(own_cancel_, recovered_);
        throw AuthError("verification failed: the slot passphrase does not open keyslot " + std::to_string(keyslot));
    }
    const SecretBuffer recovered = recovered_.get();
    if (!recovered.equals(passphrase.bytes()))
        throw AuthError("verification failed: the token decrypts to another passphrase");
}

}  // namespace luksforge::clevis::internal
