// Internal: libpq's entry points, loaded on first use (util/dynamic_library.hpp says why). Only a ledger at a
// postgresql:// URL needs them, so no other command loads libpq and its Kerberos and LDAP libraries.
#pragma once

#include <libpq-fe.h>

namespace luksforge::detail {

// X(member, symbol) for every libpq function luksforge calls: libpq().exec(...) is PQexec(...).
#define LUKSFORGE_LIBPQ_ENTRY_POINTS(X)                                                                 \
    X(conninfoParse, PQconninfoParse)                                                                   \
    X(conninfoFree, PQconninfoFree)                                                                     \
    X(freemem, PQfreemem)                                                                               \
    X(connectdbParams, PQconnectdbParams)                                                               \
    X(status, PQstatus)                                                                                 \
    X(setNoticeProcessor, PQsetNoticeProcessor)                                                         \
    X(finish, PQfinish)                                                                                 \
    X(errorMessage, PQerrorMessage)                                                                     \
    X(exec, PQexec)                                                                                     \
    X(execParams, PQexecParams)                                                                         \
    X(resultStatus, PQresultStatus)                                                                     \
    X(resultErrorField, PQresultErrorField)                                                             \
    X(ntuples, PQntuples)                                                                               \
    X(getvalue, PQgetvalue)                                                                             \
    X(getisnull, PQgetisnull)                                                                           \
    X(clear, PQclear)

struct LibpqApi {
#define LUKSFORGE_DECLARE_ENTRY(member, symbol) decltype(&::symbol) member;
    LUKSFORGE_LIBPQ_ENTRY_POINTS(LUKSFORGE_DECLARE_ENTRY)
#undef LUKSFORGE_DECLARE_ENTRY
};

// The table, loading libpq.so.5 on the first call (thread-safe); throws luksforge::Error (ELIBACC) when it
// cannot, and tries again on the next call.
const LibpqApi& libpq();

}  // namespace luksforge::detail
