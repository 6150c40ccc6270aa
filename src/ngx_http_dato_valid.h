
/*
 * Copyright (C) ngx_http_dato_module authors
 *
 * What the names in a webhook may be: DatoCMS record IDs, environment
 * names, event types, and whether a webhook is one to publish.  Both
 * parsers (the fast path, ngx_http_dato_scan.c, and the jansson one,
 * ngx_http_dato_parse.c) ask here, and so do the directives and the
 * spool.  No nginx, like the parser.
 */


#ifndef _NGX_HTTP_DATO_VALID_H_INCLUDED_
#define _NGX_HTTP_DATO_VALID_H_INCLUDED_


#include <stddef.h>

#include "ngx_http_dato_parse.h"


/* a workflow stage, a webhook_call_id: at most this many word characters */
#define NGX_HTTP_DATO_WORD_MAX_LEN   64


int ngx_http_dato_valid_id(const char *p, size_t len);
int ngx_http_dato_valid_env(const char *p, size_t len);
int ngx_http_dato_valid_word(const char *p, size_t len);
unsigned ngx_http_dato_event_bit(const char *name, size_t len);
const char *ngx_http_dato_event_name(unsigned bit);
int ngx_http_dato_ignored(ngx_http_dato_parse_result_t *res,
    const char *entity_type, size_t entity_len, const char *event_type,
    size_t event_len, unsigned events);


#endif /* _NGX_HTTP_DATO_VALID_H_INCLUDED_ */
