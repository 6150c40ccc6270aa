
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * libFuzzer harness for the payload parser (src/ngx_http_dato_parse.c,
 * its fast path src/ngx_http_dato_scan.c and the checks of names they
 * share, src/ngx_http_dato_valid.c), which knows jansson and nothing of
 * nginx.  Built and run by t/fuzz/run.sh:
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined \
 *       -fno-sanitize-recover=undefined -I src \
 *       t/fuzz/fuzz_parse.c src/ngx_http_dato_parse.c \
 *       src/ngx_http_dato_scan.c src/ngx_http_dato_valid.c \
 *       -ljansson
 *
 * Each input is
 *
 *   - parsed as a webhook body three times: with the default
 *     dato_publish_events (create update) and no cap on records, with an
 *     event mask and a cap taken from the input's first byte, and with
 *     every event and a cap of 200; after each parse the result is checked
 *     against what the parser promises (see check_result()) and freed;
 *   - given as a whole, and piece by piece between double quotes, to
 *     ngx_http_dato_valid_id(), ngx_http_dato_valid_env() and
 *     ngx_http_dato_event_bit(), whose answers are compared with simple
 *     reference implementations written from the README.
 *
 * A broken promise calls abort() after printing what broke, so that
 * libFuzzer keeps the input as a crash artifact.
 */


#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "ngx_http_dato_parse.h"
#include "ngx_http_dato_valid.h"


#define ALL_EVENTS  (NGX_HTTP_DATO_EVENT_CREATE | NGX_HTTP_DATO_EVENT_UPDATE  \
                     | NGX_HTTP_DATO_EVENT_UNPUBLISH                         \
                     | NGX_HTTP_DATO_EVENT_DELETE                            \
                     | NGX_HTTP_DATO_EVENT_PUBLISH)


static void fail(const char *fmt, ...)
    __attribute__((format(printf, 1, 2), noreturn));
static void check_same(const ngx_http_dato_parse_result_t *fast,
    const ngx_http_dato_parse_result_t *slow);
static void check_result(const uint8_t *data, size_t size, unsigned events,
    size_t max_ids, int rc, const ngx_http_dato_parse_result_t *res);
static void check_detail(const char *what, const char *s, size_t max);
static int ref_valid_id(const uint8_t *p, size_t len);
static int ref_valid_env(const uint8_t *p, size_t len);
static unsigned ref_event_bit(const uint8_t *p, size_t len);


static void
fail(const char *fmt, ...)
{
    va_list  args;

    fprintf(stderr, "\n*** fuzz_parse: invariant broken: ");

    va_start(args, fmt);
    vfprintf(stderr, fmt, args);
    va_end(args);

    fprintf(stderr, "\n");

    abort();
}


/*
 * The fast path (ngx_http_dato_scan) must agree with the jansson path
 * whenever it decides: same status, same IDs in the same order, same
 * environment, same reason.
 */

static void
check_same(const ngx_http_dato_parse_result_t *fast,
    const ngx_http_dato_parse_result_t *slow)
{
    size_t  i;

    if (fast->status != slow->status) {
        fail("fast path says %d, jansson says %d", fast->status,
             slow->status);
    }

    if (fast->nids != slow->nids) {
        fail("fast path has %zu IDs, jansson %zu", fast->nids, slow->nids);
    }

    for (i = 0; i < fast->nids; i++) {
        if (fast->ids[i].len != slow->ids[i].len
            || memcmp(fast->ids[i].data, slow->ids[i].data, fast->ids[i].len)
               != 0)
        {
            fail("fast path and jansson differ at ID %zu", i);
        }
    }

    if (fast->environment.len != slow->environment.len
        || (fast->environment.len
            && memcmp(fast->environment.data, slow->environment.data,
                      fast->environment.len) != 0))
    {
        fail("fast path and jansson differ on the environment");
    }

    if (fast->call_id.len != slow->call_id.len
        || (fast->call_id.len
            && memcmp(fast->call_id.data, slow->call_id.data,
                      fast->call_id.len) != 0))
    {
        fail("fast path and jansson differ on the webhook_call_id");
    }

    if (fast->reason != slow->reason
        || strcmp(fast->detail, slow->detail) != 0)
    {
        fail("fast path and jansson differ on the reason or the detail");
    }
}


static void
run_parser(const uint8_t *data, size_t size, unsigned events, size_t max_ids)
{
    int                           rc, fast_rc;
    ngx_http_dato_parse_result_t  res, fast;

    /* the fast path alone, then the whole parser must say the same */

    memset(&fast, 0, sizeof(fast));

    fast_rc = ngx_http_dato_scan((const char *) data, size, events, max_ids,
                                 &fast);

    memset(&res, 0xa5, sizeof(res));

    rc = ngx_http_dato_parse((const char *) data, size, events, max_ids,
                             &res);

    if (fast_rc != NGX_HTTP_DATO_SCAN_DECLINED && rc != fast_rc) {
        fail("the parser says %d, its fast path %d", rc, fast_rc);
    }

    ngx_http_dato_parse_free(&res);

    /* garbage in the result must not matter: the parser clears it */
    memset(&res, 0xa5, sizeof(res));

    rc = ngx_http_dato_parse_json((const char *) data, size, events, max_ids,
                                  &res);

    check_result(data, size, events, max_ids, rc, &res);

    if (fast_rc != NGX_HTTP_DATO_SCAN_DECLINED) {
        check_same(&fast, &res);
    }

    ngx_http_dato_parse_free(&fast);

    ngx_http_dato_parse_free(&res);

    if (res.ids != NULL || res.root != NULL) {
        fail("parse_free() left ids=%p root=%p", (void *) res.ids,
             (void *) res.root);
    }

    /* the handler may free on more than one path: a second free is a no-op */
    ngx_http_dato_parse_free(&res);
}


static void
check_result(const uint8_t *data, size_t size, unsigned events,
    size_t max_ids, int rc, const ngx_http_dato_parse_result_t *res)
{
    size_t       i;
    json_t      *entity_type, *event_type, *primary;
    const char  *s;

    (void) data;
    (void) size;

    if (rc != res->status) {
        fail("returned %d but res->status is %d", rc, res->status);
    }

    switch (rc) {
    case NGX_HTTP_DATO_PARSE_PUBLISH:
    case NGX_HTTP_DATO_PARSE_IGNORED:
    case NGX_HTTP_DATO_PARSE_BAD_JSON:
    case NGX_HTTP_DATO_PARSE_TOO_MANY:
    case NGX_HTTP_DATO_PARSE_INVALID:
        break;
    default:
        fail("status %d is none of 200, 202, 400, 413, 422", rc);
    }

    check_detail("detail", res->detail, sizeof(res->detail));

    if (res->title != NULL) {
        check_detail("title", res->title, 128);
    }

    if (rc != NGX_HTTP_DATO_PARSE_PUBLISH && res->title == NULL) {
        fail("status %d without a title", rc);
    }

    /* the handler counts the two apart by reason */

    if (rc == NGX_HTTP_DATO_PARSE_IGNORED
        && res->reason != NGX_HTTP_DATO_REASON_ENTITY_TYPE
        && res->reason != NGX_HTTP_DATO_REASON_EVENT_TYPE)
    {
        fail("200 with reason %d", res->reason);
    }

    /* invalid JSON has no tree; everything else keeps its tree until free */

    if ((rc == NGX_HTTP_DATO_PARSE_BAD_JSON) != (res->root == NULL)) {
        fail("status %d with root=%p", rc, (void *) res->root);
    }

    if (rc == NGX_HTTP_DATO_PARSE_TOO_MANY && max_ids == 0) {
        fail("413 although no cap on records was given");
    }

    if (rc != NGX_HTTP_DATO_PARSE_PUBLISH) {
        if (res->ids != NULL || res->nids != 0) {
            fail("status %d but ids=%p nids=%zu", rc, (void *) res->ids,
                 res->nids);
        }

        return;
    }

    /* 202 */

    if (res->nids == 0 || res->ids == NULL) {
        fail("202 with nids=%zu ids=%p", res->nids, (void *) res->ids);
    }

    if (max_ids && res->nids > max_ids) {
        fail("202 with %zu records past the cap of %zu", res->nids, max_ids);
    }

    if (res->detail[0] != '\0') {
        fail("202 with a detail: \"%s\"", res->detail);
    }

    for (i = 0; i < res->nids; i++) {
        s = res->ids[i].data;

        if (s == NULL) {
            fail("202: ids[%zu].data is NULL", i);
        }

        if (!ngx_http_dato_valid_id(s, res->ids[i].len)
            || !ref_valid_id((const uint8_t *) s, res->ids[i].len))
        {
            fail("202: ids[%zu] \"%.*s\" is not a record ID", i,
                 (int) (res->ids[i].len > 64 ? 64 : res->ids[i].len), s);
        }
    }

    if (res->environment.data != NULL || res->environment.len != 0) {
        if (res->environment.data == NULL
            || !ngx_http_dato_valid_env(res->environment.data,
                                        res->environment.len)
            || !ref_valid_env((const uint8_t *) res->environment.data,
                              res->environment.len))
        {
            fail("202: environment (%p, %zu) is not an environment name",
                 (void *) res->environment.data, res->environment.len);
        }
    }

    /*
     * A webhook is published only for an item event in the mask, and its
     * environment is taken only from a webhook that says it is not primary.
     */

    entity_type = json_object_get(res->root, "entity_type");
    event_type = json_object_get(res->root, "event_type");

    if (entity_type != NULL || event_type != NULL) {

        if (!json_is_string(entity_type) || !json_is_string(event_type)
            || json_string_length(entity_type) != 4
            || memcmp(json_string_value(entity_type), "item", 4) != 0)
        {
            fail("202 for a webhook that is not an item event");
        }

        if ((ref_event_bit((const uint8_t *) json_string_value(event_type),
                           json_string_length(event_type)) & events) == 0)
        {
            fail("202 for event_type \"%s\", not in the mask 0x%02x",
                 json_string_value(event_type), events);
        }

        if (res->nids != 1) {
            fail("202 with %zu records for one webhook", res->nids);
        }

        primary = json_object_get(res->root, "is_environment_primary");

        if (res->environment.data != NULL && !json_is_false(primary)) {
            fail("202: environment taken from a primary webhook");
        }

        if (res->environment.data == NULL && json_is_false(primary)) {
            fail("202: a sandbox webhook lost its environment");
        }

    } else if (res->environment.data != NULL) {
        fail("202: an environment outside of a webhook");
    }
}


/* NUL-terminated within max bytes, and printable ASCII */

static void
check_detail(const char *what, const char *s, size_t max)
{
    size_t  i;

    for (i = 0; i < max; i++) {
        if (s[i] == '\0') {
            return;
        }

        if ((unsigned char) s[i] < 0x20 || (unsigned char) s[i] > 0x7e) {
            fail("%s has byte 0x%02x at %zu", what, (unsigned char) s[i], i);
        }
    }

    fail("%s is not NUL-terminated within %zu bytes", what, max);
}


/*
 * Reference implementations, from the README: a record ID is 22 characters
 * of unpadded URL-safe base64 of 16 bytes (so the last character carries
 * 2 bits: A, Q, g or w), or a decimal string of 1 to 15 digits without a
 * leading zero, at most 2^48 - 1 (the parser's bound for numeric IDs).
 */

static int
ref_valid_id(const uint8_t *p, size_t len)
{
    size_t              i;
    unsigned long long  n;

    if (len == 22) {
        for (i = 0; i < len; i++) {
            if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
                       "0123456789-_", p[i]) == NULL || p[i] == '\0')
            {
                return 0;
            }
        }

        return p[21] == 'A' || p[21] == 'Q' || p[21] == 'g' || p[21] == 'w';
    }

    if (len < 1 || len > 15 || p[0] < '1' || p[0] > '9') {
        return 0;
    }

    n = 0;

    for (i = 0; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return 0;
        }

        n = n * 10 + (p[i] - '0');
    }

    return n <= 281474976710655ULL;
}


static int
ref_valid_env(const uint8_t *p, size_t len)
{
    size_t  i;

    if (len < 1 || len > 63) {
        return 0;
    }

    for (i = 0; i < len; i++) {
        if (p[i] == '\0'
            || strchr("abcdefghijklmnopqrstuvwxyz0123456789-", p[i]) == NULL)
        {
            return 0;
        }
    }

    return 1;
}


static unsigned
ref_event_bit(const uint8_t *p, size_t len)
{
#define EV(s, bit)                                                            \
    if (len == sizeof(s) - 1 && memcmp(p, s, len) == 0) return bit

    EV("create", NGX_HTTP_DATO_EVENT_CREATE);
    EV("update", NGX_HTTP_DATO_EVENT_UPDATE);
    EV("unpublish", NGX_HTTP_DATO_EVENT_UNPUBLISH);
    EV("delete", NGX_HTTP_DATO_EVENT_DELETE);
    EV("publish", NGX_HTTP_DATO_EVENT_PUBLISH);

#undef EV

    return 0;
}


static void
check_validators(const uint8_t *data, size_t size)
{
    int       got, want;
    unsigned  bit, ref;

    /* data is exactly size bytes on the heap: ASan sees any over-read */

    got = ngx_http_dato_valid_id((const char *) data, size) != 0;
    want = ref_valid_id(data, size);

    if (got != want) {
        fail("valid_id(\"%.*s\", %zu) is %d, expected %d",
             (int) (size > 64 ? 64 : size), (const char *) data, size, got,
             want);
    }

    got = ngx_http_dato_valid_env((const char *) data, size) != 0;
    want = ref_valid_env(data, size);

    if (got != want) {
        fail("valid_env(\"%.*s\", %zu) is %d, expected %d",
             (int) (size > 64 ? 64 : size), (const char *) data, size, got,
             want);
    }

    bit = ngx_http_dato_event_bit((const char *) data, size);
    ref = ref_event_bit(data, size);

    if (bit != ref) {
        fail("event_bit(\"%.*s\", %zu) is 0x%x, expected 0x%x",
             (int) (size > 64 ? 64 : size), (const char *) data, size, bit,
             ref);
    }
}


/*
 * The validators also get each piece of the input between double quotes,
 * in a buffer of its own size, so that the IDs, environments and event
 * names of JSON-shaped inputs reach them too, and any over-read is seen.
 */

static void
check_validators_quoted(const uint8_t *data, size_t size)
{
    size_t          len, n;
    uint8_t        *copy;
    const uint8_t  *p, *q, *end;

    p = data;
    end = data + size;

    /* the first 64 pieces: enough for the seeds, and keeps runs fast */

    for (n = 0; p < end && n < 64; n++) {
        q = memchr(p, '"', end - p);
        len = (q ? q : end) - p;

        if (len <= 64) {
            copy = malloc(len ? len : 1);
            if (copy == NULL) {
                return;
            }

            memcpy(copy, p, len);
            check_validators(copy, len);
            free(copy);
        }

        if (q == NULL) {
            break;
        }

        p = q + 1;
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t  b;

    check_validators(data, size);
    check_validators_quoted(data, size);

    /* what "dato_publish_events create update;" and no cap give */
    run_parser(data, size,
               NGX_HTTP_DATO_EVENT_CREATE | NGX_HTTP_DATO_EVENT_UPDATE, 0);

    /*
     * The first byte also picks a mask (its low 5 bits: any subset of the
     * events, including none) and a cap of 0 (none) to 7 records, so that
     * the ignore and 413 paths are reached from the same input.
     */

    b = size ? data[0] : 0;

    run_parser(data, size, b & ALL_EVENTS, b >> 5);

    /* every event, the largest batch */
    run_parser(data, size, ALL_EVENTS, 200);

    return 0;
}
