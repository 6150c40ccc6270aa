#!/usr/bin/perl

# Hostile input and secrets (issue 5): who may call (nginx's auth_basic,
# dato_webhook_secret), limits (dato_max_records, client_max_body_size,
# nesting bombs), wrong JSON types, broken encodings, and the API token,
# which must never show in a response, the logs, the status page or the
# shared memory zone.

###########################################################################

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(uuid_id ids_of hook ids_body bulk_body json_headers post_req
                webhook_data encode_json check_error);

###########################################################################

my $TOKEN  = 'tok-SECRET-8c1f';
my $SECRET = 's3cr3t-value';

# no rate limiting in this file: every call must be accepted
my $t = DatoTest->with_mock(workers => 1,
                            mock => ['--token', $TOKEN, '--limit', '10000'],
                            http => <<EOF);
    dato_api_url %%MOCK%%;
    dato_api_token $TOKEN;

    log_format hostile '\$remote_addr "\$request" \$status \$body_bytes_sent '
                       '"\$http_user_agent" "\$sent_http_content_type" '
                       'jobs=\$dato_job_ids records=\$dato_records';

    server {
        listen 127.0.0.1:%%PORT%%;
        access_log %%TMP%%/access.log hostile;

        location /basic {
            auth_basic           "DatoCMS";
            auth_basic_user_file %%TMP%%/htpasswd;
            dato_publish;
            dato_batch_window 50ms;
        }

        location /secret {
            dato_webhook_secret X-Webhook-Secret $SECRET;
            dato_publish;
            dato_batch_window 50ms;
        }

        location /max {
            dato_publish;
            dato_max_records 10;
            dato_batch_window 50ms;
        }

        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 50ms;
            dato_max_records 5000;
            client_max_body_size 4m;
        }

        location /small {
            dato_publish;
            dato_publish_wait none;
            client_max_body_size 1k;
        }

        location /fail {
            dato_publish;
            dato_batch_window 50ms;
            dato_retry_timeout 1s;
            dato_publish_timeout 5s;
        }

        location /status {
            dato_publish_status;
        }
    }
EOF

# htpasswd, which auth_basic reads at each request: one {PLAIN} user, one
# apr1 (openssl passwd -apr1) user
my $apr1 = `openssl passwd -apr1 'apr-Pass-42' 2>/dev/null` // '';
chomp $apr1;
$t->write_file('htpasswd', "editor:{PLAIN}plain-Pass-17\n"
                         . ($apr1 =~ /^\$apr1\$/ ? "apr:$apr1\n" : ''));

my @seen;       # every raw response (status line, headers, body)
my @table;      # [input, expected answer] for t/hostile-inputs.md

# a response, its raw text kept in @seen
sub kept {
    my ($r) = @_;
    push @seen, $r->{raw} // '';
    return $r;
}

sub post {
    my ($path, $body, %o) = @_;
    return kept($t->post_json($path, $body, headers => $o{headers} // json_headers(),
                              timeout => $o{timeout} // 10));
}

# a hostile body: a clear JSON 4xx, fast, and recorded for the table
sub hostile {
    my ($name, $body, $code, %o) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    my $t0 = Time::HiRes::time();
    my $r = post($o{path} // '/hook', $body, %o);
    my $dt = Time::HiRes::time() - $t0;
    my $e = check_error($r, $code, $name);
    cmp_ok($dt, '<', $o{max_time} // 5, sprintf('%s: answered in %.2f s', $name, $dt));
    ok(length($r->{body} // '') < 2048, "$name: short answer ("
       . length($r->{body} // '') . ' bytes)');
    push @table, [ $o{label} // $name, $r->{status} . ($e && $e->{title} ? " ($e->{title})" : '') ];
    return ($r, $e);
}

my $A = uuid_id(1);
my $B = uuid_id(2);

###########################################################################
# HTTP Basic auth through nginx's auth_basic

sub basic {
    my ($cred, $id) = @_;
    my $h = json_headers(defined $cred
        ? (Authorization => 'Basic ' . MIME::Base64::encode_base64($cred, '')) : ());
    return post('/basic', ids_body($id), headers => $h);
}

{
    $t->mock_reset;
    my $r = basic(undef, $A);
    is($r->{status}, 401, 'basic auth: no credentials 401');
    like($r->{headers}{'www-authenticate'} // '', qr/^Basic realm="DatoCMS"/,
         'basic auth: WWW-Authenticate: Basic realm="DatoCMS"');
    like($r->{body} // '', qr/401 Authorization Required/, 'basic auth: nginx\'s own 401 page');
    push @table, ['`auth_basic` location, no `Authorization`', '401 (nginx\'s page, `WWW-Authenticate: Basic`)'];

    $r = basic('editor:wrong-Pass-17', $A);
    is($r->{status}, 401, 'basic auth: wrong password 401');
    $r = basic('nobody:plain-Pass-17', $A);
    is($r->{status}, 401, 'basic auth: unknown user 401');
    $r = post('/basic', ids_body($A),
              headers => json_headers(Authorization => 'Basic %%%not-base64'));
    is($r->{status}, 401, 'basic auth: garbage Authorization 401');
    push @table, ['`auth_basic`: wrong password, unknown user, garbage `Authorization`', '401 (nginx\'s page)'];

    Time::HiRes::sleep(0.2);
    is(scalar($t->publishes), 0, 'basic auth: refused calls sent nothing to the API');

    $r = basic('editor:plain-Pass-17', $A);
    is($r->{status}, 202, 'basic auth: right {PLAIN} credentials 202') or diag $r->{raw};
    is($r->{json} && $r->{json}{meta}{status}, 'accepted', 'basic auth: accepted with a job');
    SKIP: {
        skip 'openssl passwd -apr1 not available', 1 unless $apr1 =~ /^\$apr1\$/;
        $r = basic('apr:apr-Pass-42', $B);
        is($r->{status}, 202, 'basic auth: right apr1 credentials 202') or diag $r->{raw};
    }
    my @p = $t->publishes;
    is_deeply([ sort map { @{ $_->{ids} } } @p ],
              [ sort($A, $apr1 =~ /^\$apr1\$/ ? $B : ()) ],
              'basic auth: the accepted records reached the API');
    push @table, ['`auth_basic`: right user and password (`{PLAIN}` or apr1 hash)', '202'];
}

###########################################################################
# dato_webhook_secret

sub with_secret {
    my ($name, $value, $id, %o) = @_;
    return kept($t->json_request(method => $o{method} // 'POST', path => '/secret',
                                 headers => json_headers(defined $name ? ($name => $value) : ()),
                                 body => ids_body($id)));
}

{
    $t->mock_reset;
    my $mark = $t->log_mark;
    my $e = check_error(with_secret(undef, undef, $A), 401, 'secret: header missing');
    is($e && $e->{title}, 'unauthorized', 'secret: title "unauthorized"');
    push @table, ['`dato_webhook_secret`: header missing', '401 JSON'];

    my %wrong = (
        'same length, last byte differs'  => 's3cr3t-valuf',
        'same length, first byte differs' => 't3cr3t-value',
        'shorter (a prefix)'              => 's3cr3t-valu',
        'longer (secret + 1 byte)'        => "${SECRET}x",
        'much longer'                     => $SECRET x 50,
        'other case'                      => uc $SECRET,
        'empty'                           => '',
    );
    for my $k (sort keys %wrong) {
        check_error(with_secret('X-Webhook-Secret', $wrong{$k}, $A), 401, "secret: $k");
    }
    push @table, ['`dato_webhook_secret`: wrong value (same length, a prefix, longer, other case, empty)', '401 JSON'];

    check_error(with_secret('X-Webhook-Secret-2', $SECRET, $A), 401,
                'secret: right value under another header name');
    push @table, ['`dato_webhook_secret`: right value under another header name', '401 JSON'];

    # GET without the secret: refused before the method is looked at
    check_error(with_secret(undef, undef, $A, method => 'GET'), 401, 'secret: GET without it');

    Time::HiRes::sleep(0.2);
    is(scalar($t->publishes), 0, 'secret: refused calls sent nothing to the API');

    my $log = $t->error_log_since($mark);
    like($log, qr/webhook without the right "X-Webhook-Secret" header/,
         'secret: refusals are logged');
    my @l = grep { /\[(?:info|notice|warn|error)\]/ && /\Q$SECRET\E/ } split /\n/, $log;
    is(scalar @l, 0, 'secret: the secret is in no non-debug log line') or diag join "\n", @l;

    my $r = with_secret('x-WEBHOOK-secret', $SECRET, $B);
    is($r->{status}, 202, 'secret: right value, header name in another case: 202')
        or diag $r->{raw};
    is($r->{json} && $r->{json}{meta}{status}, 'accepted', 'secret: accepted with a job');
    my @p = $t->publishes;
    is_deeply([ map { @{ $_->{ids} } } @p ], [$B], 'secret: the record reached the API');
    push @table, ['`dato_webhook_secret`: right value, header name in another case', '202'];

    $r = with_secret('X-Webhook-Secret', $SECRET, $A, method => 'GET');
    push @seen, $r->{raw} // '';
    is($r->{status}, 405, 'secret: GET with the secret is 405 as usual');

    is(scalar(grep { /\Q$SECRET\E/ } @seen), 0, 'secret: no response carries the secret');
}

# the JSON 401: the module's error shape, byte for byte, and counted on the
# status page as webhooks.rejected.401
{
    my $before = $t->json_request(method => 'GET', path => '/status')->{json};
    my $r = with_secret('X-Webhook-Secret', 'wrong', $A);
    is($r->{status}, 401, 'secret: 401');
    is($r->{body}, '{"errors":[{"status":"401","title":"unauthorized",'
                   . '"detail":"the webhook secret is missing or wrong"}]}' . "\n",
       'secret: the 401 body is {"errors":[{"status","title","detail"}]}');
    ok(!exists $r->{headers}{'www-authenticate'},
       'secret: no WWW-Authenticate (not an HTTP authentication scheme)');
    my $after = $t->json_request(method => 'GET', path => '/status')->{json};
    is(($after->{webhooks}{rejected}{401} // 0)
       - ($before->{webhooks}{rejected}{401} // 0), 1,
       'secret: counted in webhooks.rejected.401');
}

###########################################################################
# dato_max_records

{
    $t->mock_reset;
    my @ids = map { uuid_id(100 + $_) } 1 .. 11;
    my ($r, $e) = hostile('11 ids, dato_max_records 10', { ids => \@ids }, 413,
                          path => '/max', label => '11 IDs with `dato_max_records 10`');
    like($e ? $e->{detail} : '', qr/\b11\b.*\b10\b/, '11 ids: detail names 11 and 10');
    hostile('bulk body with 11 items, dato_max_records 10', bulk_body(@ids), 413,
            path => '/max', label => 'bulk body with 11 items, `dato_max_records 10`');
    Time::HiRes::sleep(0.2);
    is(scalar($t->publishes), 0, 'max records: nothing reached the API');

    $r = post('/max', { ids => [ @ids[0 .. 9] ] });
    is($r->{status}, 202, '10 ids, dato_max_records 10: 202') or diag $r->{raw};
    is($r->{json} && $r->{json}{meta}{records}, 10, '10 ids: meta.records 10');
    is(scalar(map { @{ $_->{ids} } } $t->publishes), 10, '10 ids: the 10 reached the API');
    push @table, ['10 IDs with `dato_max_records 10`', '202'];
}

###########################################################################
# wrong types, broken encodings, bombs: a clear 4xx, never a 5xx

$t->mock_reset;
my $hostile_mark = $t->log_mark;

sub wh {
    my (%extra) = @_;
    return encode_json(webhook_data(id => $A, extra => \%extra));
}

# a webhook with keys set as given, null (undef) included
sub wh_set {
    my (%set) = @_;
    my $d = webhook_data(id => $A);
    $d->{$_} = $set{$_} for keys %set;
    return encode_json($d);
}

sub wh_primary_false {
    my ($env) = @_;
    my $d = webhook_data(id => $A, is_environment_primary => 0);
    $d->{environment} = $env;
    return encode_json($d);
}

my @cases = (
    # [label, body, expected status(es)]
    ['`{"ids":"abc"}`',        '{"ids":"abc"}',    422],
    ['`{"ids":123}`',          '{"ids":123}',      422],
    ['`{"ids":[123]}`',        '{"ids":[123]}',    422],
    ['`{"ids":[43012949]}` (a valid ID as a number)', '{"ids":[43012949]}', 422],
    ['`{"ids":[null]}`',       '{"ids":[null]}',   422],
    ['`{"ids":null}`',         '{"ids":null}',     422],
    ['`{"ids":[["x"]]}`',      '{"ids":[["x"]]}',  422],
    ['`{"ids":[{}]}`',         '{"ids":[{}]}',     422],
    ['`{"ids":[true,false]}`', '{"ids":[true,false]}', 422],
    ['`{"ids":{"0":"43012949"}}`', '{"ids":{"0":"43012949"}}', 422],
    ['`{"ids":["281474976710656"]}` (2^48, above the largest ID)',
        '{"ids":["281474976710656"]}', 422],
    ['`{"ids":[1e400]}` (number overflow)', '{"ids":[1e400]}', 400],
    ['`{"ids":[99999999999999999999]}` (integer overflow)',
        '{"ids":[99999999999999999999]}', 400],
    ['`null`, `true`, `1`, `"x"`, `[]` as the whole body', 'null', 422],
    ['`true`', 'true', 422, 1],
    ['`1`', '1', 422, 1],
    ['`"x"`', '"x"', 422, 1],
    ['`[]`', '[]', 422, 1],
    ['webhook with `"entity":[]`',          wh(entity => []),    422],
    ['webhook with `"entity":null`',        wh_set(entity => undef), 422],
    ['webhook with `"entity":"X9_l7IdvRq26r7e2wn353Q"`', wh(entity => $A), 422],
    ['webhook with `"entity":{"id":123}`',  wh(entity => { id => 123 }),  422],
    ['webhook with `"entity":{"id":null}`', wh_set(entity => { id => undef }), 422],
    ['webhook with `"entity":{}`',          wh_set(entity => {}), 422],
    ['webhook with `"entity":{"id":["43012949"]}`', wh(entity => { id => ['43012949'] }), 422],
    ['webhook with `"entity_type":5`',      wh(entity_type => 5),  422],
    ['webhook with `"entity_type":null`',   wh_set(entity_type => undef), 422],
    ['webhook with `"event_type":null`',    wh_set(event_type => undef), 422],
    ['webhook with `"event_type":["update"]`', wh(event_type => ['update']), 422],
    ['webhook, `is_environment_primary:false`, `"environment":123`', wh_primary_false(123), 422],
    ['webhook, `is_environment_primary:false`, `"environment":"BAD ENV"`', wh_primary_false('BAD ENV'), 422],
    ['webhook, `is_environment_primary:false`, `"environment":null`', wh_primary_false(undef), 422],
    ['webhook, `is_environment_primary:false`, environment with CR LF (header injection)',
        wh_primary_false("sandbox\r\nX-Injected: 1"), 422],
    ['webhook, `is_environment_primary:false`, environment of 64 characters',
        wh_primary_false('a' x 64), 422],
    ['bulk body with `"data":[]`',  '{"data":[]}',  422],
    ['bulk body with `"data":"x"`', '{"data":"x"}', 422],
    ['bulk body with `"data":null`', '{"data":null}', 422],
    ['bulk body with `items.data` an object',
        '{"data":{"type":"item_bulk_publish_operation","relationships":{"items":{"data":{"type":"item","id":"43012949"}}}}}', 422],
    ['bulk body with `items.data` a string',
        '{"data":{"type":"item_bulk_publish_operation","relationships":{"items":{"data":"43012949"}}}}', 422],
    ['bulk body with `items.data` null',
        '{"data":{"type":"item_bulk_publish_operation","relationships":{"items":{"data":null}}}}', 422],
    ['bulk body with `items.data:[{"type":"item","id":43012949}]`',
        '{"data":{"type":"item_bulk_publish_operation","relationships":{"items":{"data":[{"type":"item","id":43012949}]}}}}', 422],
    ['bulk body with `"data.type":5`', '{"data":{"type":5}}', 422],
    ['duplicate keys, nested (`"entity":{"id":A,"id":B}`)',
        wh() =~ s/"entity":\{/"entity":{"id":"43012950",/r, 400],
    ['duplicate keys, nested deeper (`{"ids":[...],"x":{"a":{"b":1,"b":2}}}`)',
        '{"ids":["43012949"],"x":{"a":{"b":1,"b":2}}}', 400],
    ['duplicate keys in a bulk item',
        '{"data":{"type":"item_bulk_publish_operation","relationships":{"items":{"data":[{"type":"item","id":"43012949","id":"43012950"}]}}}}', 400],
    ['invalid UTF-8 (`\xff\xfe`) inside a JSON string', qq({"ids":["X9_l7Idv\xff\xfeRq26r7e2wn353Q"]}), 400],
    ['overlong UTF-8 (`\xc0\xaf`) inside a JSON string', qq({"ids":["43012949"],"t":"\xc0\xaf"}), 400],
    ['UTF-8 surrogate bytes (`\xed\xa0\x80`) inside a JSON string', qq({"ids":["43012949"],"t":"\xed\xa0\x80"}), 400],
    ['lone surrogate escape `"\ud800"`', '{"ids":["43012949"],"t":"\ud800"}', 400],
    ['`\u0000` inside an ID', '{"ids":["X9_l7IdvRq26r7\u0000e2wn353Q"]}', [400, 422]],
    ['`\u0000` inside `event_type` (`"update\u0000x"`)', wh(event_type => 'PLACEHOLDER') =~ s/PLACEHOLDER/update\\u0000x/r, [400, 422]],
    ['raw NUL byte inside an ID', qq({"ids":["X9_l7IdvRq26r7\0e2wn353Q"]}), [400, 422]],
    ['control character (raw TAB) inside an ID', qq({"ids":["4301\t2949"]}), [400, 422]],
    ['ID with escaped CR LF (`"4301\r\n2949"`)', '{"ids":["4301\r\n2949"]}', 422],
    ['UTF-8 BOM before the JSON', qq(\xef\xbb\xbf{"ids":["43012949"]}), 400],
    ['trailing garbage after the JSON (`{...} x`)', '{"ids":["43012949"]} x', 400],
    ['two JSON documents', '{"ids":["43012949"]}{"ids":["43012950"]}', 400],
    ['JSON with a comment', '{"ids":["43012949"] /* c */}', 400],
    ['truncated JSON', '{"ids":["43012949"', 400],
    ['single quotes', q({'ids':['43012949']}), 400],
);

for my $c (@cases) {
    my ($label, $body, $code, $no_row) = @$c;
    my ($r) = hostile($label, $body, $code, label => $label);
    pop @table if $no_row;
}

# a rejected value longer than the detail shows is cut, whole bytes of it:
# json_dumpb() into a short buffer once sent stack bytes in the detail
for my $n (41, 60, 300) {
    my $long = 'x' x $n;
    my $r = $t->post_json('/hook', qq({"ids":["$long","43012949"]}));
    is($r->{status}, 422, "invalid ID of $n characters: 422");
    my $d = ($r->{json} && $r->{json}{errors}[0]{detail}) // '';
    like($d, qr/^not DatoCMS record IDs: "x{30,}\.\.\.$/,
         "invalid ID of $n characters: its start, cut with ...");
}

# big and deep
{
    my $big = 'A' x (2 * 1024 * 1024);
    my ($r, $e) = hostile('2 MB string as an ID', qq({"ids":["$big"]}), 422,
                          label => '2 MB string as an ID (`client_max_body_size 4m`)');
    ok(defined $e && length($e->{detail}) < 600, '2 MB ID: the detail is cut short');

    # valid bodies with a 2 MB string where it does no harm
    $r = post('/hook', qq({"ids":["43012949"],"$big":1}));
    is($r->{status}, 202, '2 MB string as a key beside a valid id: 202 as without it')
        or diag substr($r->{raw} // '', 0, 600);
    push @table, ['2 MB string as an object key beside a valid ID', "$r->{status}"];

    $r = post('/hook', wh(entity_type => $big));
    is($r->{status}, 200, '2 MB entity_type: 200 ignored') or diag substr($r->{raw} // '', 0, 600);
    is($r->{json} && $r->{json}{meta}{status}, 'ignored', '2 MB entity_type: ignored');
    ok(length($r->{body} // '') < 2048, '2 MB entity_type: short answer');
    push @table, ['webhook with a 2 MB `entity_type`', "$r->{status} ignored"];

    my $long = 'X' x 10240;
    ($r, $e) = hostile('10 KB ID', qq({"ids":["$long"]}), 422, label => 'ID of 10 KB');
    ok(defined $e && length($e->{detail}) < 600, '10 KB ID: the detail is cut short');
    ($r, $e) = hostile('10 KB ID in a webhook', wh(entity => { id => $long }), 422,
                       label => 'webhook `entity.id` of 10 KB');
}

{
    my $n = 100_000;
    my ($r) = hostile("[[[...]]] nesting bomb, $n levels", ('[' x $n) . (']' x $n), 400,
                      max_time => 2, label => "`[[[[...]]]]`, $n levels");
    like($r->{json} ? $r->{json}{errors}[0]{detail} : '', qr/depth/i,
         'nesting bomb: detail says the depth was too much');

    $n = 50_000;
    hostile("{\"a\":{\"a\":...}} nesting bomb, $n levels",
            ('{"a":' x $n) . '1' . ('}' x $n), 400, max_time => 2,
            label => "`{\"a\":{\"a\":...}}`, $n levels");

    hostile("ids nested 10,000 deep", '{"ids":' . ('[' x 10000) . '"43012949"' . (']' x 10000) . '}',
            [400, 422], max_time => 2, label => '`{"ids":[[[...["43012949"]...]]]}`, 10,000 levels');
}

{
    my @ids = map { uuid_id(1_000_000 + $_) } 1 .. 100_000;
    my ($r, $e) = hostile('100,000 valid ids, dato_max_records 5000', { ids => \@ids }, 413,
                          max_time => 5,
                          label => '100,000 valid IDs (2.5 MB) with `dato_max_records 5000`');
    like($e ? $e->{detail} : '', qr/100000/, '100,000 ids: the detail names the count');

    ($r, $e) = hostile('100,000 invalid ids', '{"ids":[' . join(',', ('"bad"') x 100_000) . ']}',
                       [413, 422], max_time => 5, label => '100,000 invalid IDs');
    like($e ? $e->{detail} : '', qr/and \d+ more/, '100,000 invalid ids: the detail says "and N more"')
        if $r->{status} == 422;
}

# empty and chunked bodies (nginx hands these over as a chain that ends in
# an empty last_buf buffer)
{
    my $r = post('/hook', '');
    check_error($r, 400, 'empty body (Content-Length: 0)');
    push @table, ['empty body (`Content-Length: 0`)', '400 (invalid JSON)'];

    $r = post('/hook', undef);
    check_error($r, 400, 'no body at all');
    push @table, ['`POST` without a body (no `Content-Length`)', '400 (invalid JSON)'];

    $r = kept($t->post_json('/hook', '   ', chunked => 1));
    check_error($r, 400, 'whitespace-only chunked body');
    push @table, ['whitespace-only chunked body', '400 (invalid JSON)'];

    $r = kept($t->post_json('/hook', '{"ids":[{}]}', chunked => 1, chunk_size => 5));
    check_error($r, 422, 'small chunked body with a wrong type');
    push @table, ['small chunked body `{"ids":[{}]}` (5-byte chunks)', '422 (invalid record IDs)'];

    $r = kept($t->post_json('/hook', '{"ids":["43012949"]}', chunked => 1));
    is($r->{status}, 202, 'small valid chunked body: 202 (README: chunked bodies work like small ones)')
        or diag($r->{status} ? $r->{raw} : $r->{error});
}

{
    my $body = ids_body(ids_of(501, 100));
    my $r = post('/small', $body);
    is($r->{status}, 413, 'body above client_max_body_size: 413');
    like($r->{body} // '', qr/413 Request Entity Too Large/, '413: nginx\'s own page');
    push @table, ['body above `client_max_body_size` (`Content-Length`)', '413 (nginx\'s page)'];

    $r = kept($t->post_json('/small', $body, chunked => 1, chunk_size => 300));
    is($r->{status}, 413, 'chunked body above client_max_body_size: 413');
    push @table, ['chunked body above `client_max_body_size`', '413 (nginx\'s page)'];
}

# ten hostile bodies at once on one worker: still all refused
{
    my @r = $t->parallel_requests([ map {
        post_req('/hook', $_ % 2 ? ('[' x 100_000) . (']' x 100_000) : '{"ids":[{}]}') } 1 .. 10 ]);
    kept($_) for @r;
    is(scalar(grep { $_->{status} == 400 || $_->{status} == 422 } @r), 10,
       '10 hostile bodies at once: all 4xx');
}

Time::HiRes::sleep(0.3);
{
    my @p = $t->publishes;
    my @ids = map { @{ $_->{ids} } } @p;
    # only the valid body with a 2 MB key may have been accepted
    is_deeply([ grep { $_ ne '43012949' } @ids ], [],
              'no hostile input reached the API (apart from the valid 2 MB-key body)')
        or diag explain [ map { substr($_->{body}, 0, 200) } @p ];
    my $log = $t->error_log_since($hostile_mark);
    my @bad = grep { /\[(?:alert|crit|emerg)\]|signal|500 Internal/ } split /\n/, $log;
    is(scalar @bad, 0, 'hostile inputs: no alert, crit, crash or 500 in error.log')
        or diag join "\n", @bad[0 .. ($#bad > 9 ? 9 : $#bad)];
}

is(scalar(grep { m{^HTTP/1\.\d 5\d\d} } @seen), 0, 'no response was a 5xx');

{
    $t->mock_reset;
    my $r = post('/hook', hook(uuid_id(4242)));
    is($r->{status}, 202, 'after the hostile inputs, a valid webhook still gets 202')
        or diag $r->{raw};
    ok($t->wait_for(sub { scalar $t->publishes }, 3), 'and its record reaches the API');
    $r = post('/basic', hook(uuid_id(4243)),
              headers => json_headers(Authorization => 'Basic '
                           . MIME::Base64::encode_base64('editor:plain-Pass-17', '')));
    is($r->{status}, 202, 'and an authenticated one too');
}

###########################################################################
# secrets: the token under a failing API

{
    $t->mock_reset;
    my $mark = $t->log_mark;

    # 500 until dato_retry_timeout (1s) has passed
    $t->mock_faults([ ({ status => 500 }) x 20 ]);
    my $r = post('/fail', { ids => [uuid_id(603)] });
    check_error($r, 502, 'API answers 500 until the retries run out');
    $t->mock_reset;

    # network failure: the mock closes without an answer
    $t->mock_faults([ ({ close => JSON::PP::true }) x 20 ]);
    $r = post('/fail', { ids => [uuid_id(604)] });
    check_error($r, 502, 'API closes the connection until the retries run out');
    $t->mock_reset;

    # forced 401 (mock fault): refused for good
    $t->mock_faults({ status => 401 });
    $r = post('/fail', { ids => [uuid_id(601)] });
    check_error($r, 502, 'API answers 401 (fault)');
    is($r->{json} && $r->{json}{errors}[0]{code}, 'INVALID_AUTHORIZATION_HEADER',
       '401 (fault): DatoCMS\'s code is passed on');

    # real 401: the mock expects another token
    $t->mock_config({ token => 'some-other-token' });
    $r = post('/fail', { ids => [uuid_id(602)] });
    check_error($r, 502, 'API answers 401 (wrong token)');
    $t->mock_config({ token => $TOKEN });

    my $log = $t->error_log_since($mark);
    like($log, qr/\[error\].*gave up publishing/, 'failures are logged as given up');
    like($log, qr/\[warn\].*bulk publish of 1 record failed/, 'retries are logged');
    my @l = grep { /\Q$TOKEN\E/ } split /\n/, $log;
    is(scalar @l, 0, 'no log line about the failures carries the token') or diag join "\n", @l[0 .. 4];

    push @table, ['(API refusing with 401, 500, closed connections)', '502 JSON with DatoCMS\'s code; the token in no log line'];
}

{
    # positive control: the token really is sent, so its absence elsewhere means something
    $t->mock_reset;
    my $r = post('/fail', { ids => [uuid_id(605)] });
    is($r->{status}, 202, 'API back: 202');
    my @p = $t->publishes;
    is($p[0] && $p[0]{headers}{authorization}, "Bearer $TOKEN",
       'the API got the token (positive control)');
}

# status page, both formats
for my $q ('', '?format=prometheus') {
    my $r = kept($t->request(method => 'GET', path => "/status$q"));
    is($r->{status}, 200, "status page$q: 200");
    like($r->{body} // '', qr/webhooks|dato_webhooks/, "status page$q: has counters");
    unlike($r->{raw} // '', qr/\Q$TOKEN\E/, "status page$q: no token");
    unlike($r->{raw} // '', qr/Bearer/, "status page$q: no Authorization header value");
}

# shared memory: the zone holds a hash of the token, never the token
SKIP: {
    my @workers = DatoTest::children($t->pid);
    skip 'no worker process found', 3 unless @workers;
    my $pid = $workers[0];
    open my $maps, '<', "/proc/$pid/maps" or skip "cannot read /proc/$pid/maps: $!", 3;
    my @zones;
    while (my $l = <$maps>) {
        no warnings 'portable';
        next unless $l =~ /^([0-9a-f]+)-([0-9a-f]+) rw-s \S+ \S+ \d+\s+(.*)$/;
        my ($from, $to, $what) = (hex $1, hex $2, $3);
        next unless $what =~ m{/dev/zero|SYSV|memfd|^$};
        push @zones, [$from, $to];
    }
    close $maps;
    open my $mem, '<:raw', "/proc/$pid/mem" or skip "cannot read /proc/$pid/mem: $!", 3;
    my ($bytes, $found, $control) = (0, 0, 0);
    for my $z (@zones) {
        my ($from, $to) = @$z;
        sysseek($mem, $from, 0) or next;
        my $got = '';
        while (length $got < $to - $from) {
            my $n = sysread($mem, my $buf, $to - $from - length $got);
            last unless $n;
            $got .= $buf;
        }
        $bytes += length $got;
        $found++ if index($got, $TOKEN) >= 0;
        $control++ if index($got, 'INVALID_AUTHORIZATION_HEADER') >= 0;
    }
    close $mem;
    cmp_ok($bytes, '>=', 512 * 1024, "shared mappings read (" . scalar(@zones) . " mappings, $bytes bytes)");
    ok($control, 'the zone is the one with the status data (last_api_error code found)');
    is($found, 0, 'the token is not in shared memory');
    push @table, ['(token searched for in the shared memory zone)', 'not there; only a hash of it'];
}

# every response, the error log (debug level), the access log, every file
{
    is(scalar(grep { /\Q$TOKEN\E/ } @seen), 0,
       'no response (headers or body) carries the token (' . scalar(@seen) . ' responses)');
    ok(scalar @seen > 100, 'responses were collected');
}

$t->stop;

{
    my $elog = $t->error_log;
    like($elog, qr/\[debug\]/, 'error.log was written at debug level');
    $t->log_unlike(qr/\Q$TOKEN\E/, 'error.log (debug) does not contain the token');
    my $alog = $t->read_file('access.log') // '';
    like($alog, qr{"POST /hook HTTP/1\.1" 202}, 'access.log was written');
    unlike($alog, qr/\Q$TOKEN\E/, 'access.log does not contain the token');

    # everything the run produced, but the configuration (where the token is
    # given) and the mock's own records (where it is received)
    my @files;
    my @dirs = ($t->tmpdir);
    while (my $d = shift @dirs) {
        opendir my $dh, $d or next;
        for my $f (grep { !/^\.\.?$/ } readdir $dh) {
            my $p = "$d/$f";
            if (-d $p) { push @dirs, $p; next }
            push @files, $p if -f $p;
        }
        closedir $dh;
    }
    my $tmp = $t->tmpdir;
    my @skip = map { "$tmp/$_" } qw(nginx.conf nginx-test.conf mock.log mock.out mock.err);
    my %skip = map { $_ => 1 } @skip;
    my @hit = grep { !$skip{$_} && index($t->read_file($_) // '', $TOKEN) >= 0 } @files;
    is_deeply(\@hit, [], 'no file the run produced holds the token (' . scalar(@files)
              . ' files, the configuration and the mock\'s records aside)');
}

if ($ENV{DATO_HOSTILE_TABLE}) {
    open my $fh, '>', $ENV{DATO_HOSTILE_TABLE} or die "$ENV{DATO_HOSTILE_TABLE}: $!\n";
    print $fh "| input | answer |\n|---|---|\n";
    for my $row (@table) {
        my ($in, $out) = @$row;
        $in =~ s/\|/\\|/g;
        print $fh "| $in | $out |\n";
    }
    close $fh;
}

$t->done;
done_testing;
