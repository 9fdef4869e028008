// Internal: the ledger's storage behind Ledger — one backend per database (SQLite file, PostgreSQL server).
//
// Every backend keeps the same rules, enforced inside the database in one transaction each:
//  * a row is "committed" (an image exists), or "reserved" with a lease deadline (an image is being made);
//  * an instance counts while committed, or reserved with its lease not yet past (the database's clock);
//  * reserve() counts and inserts under one lock per fingerprint, refusing past the limit;
//  * commit() of a reservation whose lease ran out re-checks the limit it was reserved under.
#pragma once

#include <luksforge/ledger.hpp>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

struct sqlite3;

namespace luksforge::detail {

// The schema version this luksforge writes; older ledgers are migrated when opened.
inline constexpr int kLedgerSchemaVersion = 3;

class LedgerBackend {
public:
    virtual ~LedgerBackend() = default;

    virtual std::int64_t record(LedgerRecord& record) = 0;
    virtual std::int64_t reserve(LedgerRecord& record, std::uint64_t max_instances, std::int64_t lease_seconds) = 0;
    virtual void commit(std::int64_t id) = 0;
    virtual void release(std::int64_t id) = 0;
    virtual std::uint64_t count_instances(const std::string& fingerprint) = 0;
    virtual std::vector<LedgerRecord> records(const std::optional<std::string>& fingerprint) = 0;
    virtual int schema_version() = 0;
    virtual sqlite3* sqlite_handle() const noexcept { return nullptr; }
};

std::unique_ptr<LedgerBackend> open_sqlite_backend(const std::filesystem::path& path);
std::unique_ptr<LedgerBackend> open_postgres_backend(const std::string& url);

// "postgresql://..." or "postgres://...".
bool is_postgres_url(std::string_view location);

// The time of a record without one: now; its host without one: this host's name.
void prepare_record(LedgerRecord& record);
// FormatError unless the record has a fingerprint, an image and an event (checked right before inserting, so
// a reservation past the limit is a LimitError whatever the record).
void require_complete(const LedgerRecord& record);
[[noreturn]] void throw_limit(const LedgerRecord& record, std::uint64_t count, std::uint64_t max_instances,
                              const std::string& ledger);

}  // namespace luksforge::detail
