#!/usr/bin/perl

# Payloads accepted by a dato_publish location, the errors it answers, and
# exactly what reaches the (mock) DatoCMS API: headers, bodies, batching of
# big bodies, dedup and environments.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook ids_body bulk_body json_headers post_req);

my $t = DatoTest->new(workers => 1);

# no rate limiting in this file: every call must be accepted
$t->start_mock('--limit', '10000');

$t->run(http => <<'EOF');
    dato_api_url %%MOCK%%;
    dato_api_token test-token;

    server {
        listen 127.0.0.1:%%PORT%%;

        location /hook {
            dato_publish;
            dato_batch_window 100ms;
        }

        location /none {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 300ms;
        }

        location /env {
            dato_publish;
            dato_environment sandbox-1;
            dato_batch_window 100ms;
        }

        location /events {
            dato_publish;
            dato_publish_events create update unpublish;
            dato_batch_window 100ms;
        }

        location /big {
            dato_publish;
            dato_publish_wait none;
            dato_batch_window 100ms;
            client_body_buffer_size 1k;
            client_max_body_size 1m;
        }
    }
EOF

my @bodies;     # every response body, checked for the token at the end

# a response, its body kept in @bodies
sub kept {
    my ($r) = @_;
    push @bodies, $r->{body} // '';
    return $r;
}

# POST as JSON (%h: other headers instead of Content-Type: application/json)
sub post {
    my ($path, $body, %h) = @_;
    return kept($t->post_json($path, $body, %h ? (headers => {%h}) : ()));
}

sub sorted { [ sort @{ $_[0] } ] }

# 202 with exactly one job, accepted; returns the job id
sub check_accepted {
    my ($r, $records, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 202, "$name: 202") or diag $r->{raw};
    like($r->{headers}{'content-type'} // '', qr{^application/json\b},
         "$name: JSON content type");
    my $job = ref $r->{json} eq 'HASH' && ref $r->{json}{data} eq 'ARRAY'
              && ref $r->{json}{data}[0] eq 'HASH' ? $r->{json}{data}[0]{id} : undef;
    like($job // '', qr/^\d+\z/, "$name: a decimal job id");
    is_deeply($r->{json},
              { data => [ { type => 'job', id => $job } ],
                meta => { records => $records, status => 'accepted' } },
              "$name: exact body") or diag $r->{body};
    return $job;
}

sub check_ignored {
    my ($r, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, 200, "$name: 200") or diag $r->{raw};
    like($r->{headers}{'content-type'} // '', qr{^application/json\b},
         "$name: JSON content type");
    my $j = $r->{json};
    ok(ref $j eq 'HASH' && ref $j->{meta} eq 'HASH', "$name: meta object")
        or return;
    is_deeply([ sort keys %$j ], ['meta'], "$name: only meta");
    is_deeply([ sort keys %{ $j->{meta} } ], [qw(reason status)],
              "$name: meta has status and reason");
    is($j->{meta}{status}, 'ignored', "$name: status ignored");
    like($j->{meta}{reason} // '', qr/\S/, "$name: a reason is given");
}

sub check_error {
    my ($r, $code, $name) = @_;
    local $Test::Builder::Level = $Test::Builder::Level + 1;
    is($r->{status}, $code, "$name: $code") or diag $r->{raw};
    is($r->{headers}{'content-type'}, 'application/json', "$name: application/json");
    my $j = $r->{json};
    ok(ref $j eq 'HASH' && ref $j->{errors} eq 'ARRAY' && @{ $j->{errors} } == 1
       && ref $j->{errors}[0] eq 'HASH', "$name: one error object")
        or return diag($r->{body} // '');
    my $e = $j->{errors}[0];
    is_deeply([ sort keys %$j ], ['errors'], "$name: only errors");
    is_deeply([ sort keys %$e ], [qw(detail status title)],
              "$name: status, title, detail");
    is($e->{status}, "$code", "$name: status is the string \"$code\"");
    like($e->{title} // '', qr/\S/, "$name: title");
    like($e->{detail} // '', qr/\S/, "$name: detail");
    return $e;
}

my $A = DatoTest::uuid_id(1);
my $B = DatoTest::uuid_id(2);
my $C = DatoTest::uuid_id(3);

# ------------------------------------------------ webhook update event --

{
    $t->mock_reset;
    my $r = post('/hook', hook($A, event_type => 'update'));
    my $job = check_accepted($r, 1, 'update webhook');

    my @p = $t->publishes;
    is(scalar @p, 1, 'update webhook: exactly one bulk publish call');
    my $q = $p[0] // { headers => {} };
    is($q->{method}, 'POST', 'update webhook: POST');
    is($q->{path}, '/items/bulk/publish', 'update webhook: path');
    is($q->{status}, 202, 'update webhook: the mock accepted the call');
    is($q->{job}, $job, 'update webhook: answered job id is the mock\'s job');
    is_deeply($q->{ids}, [$A], 'update webhook: the record id was sent');
    is_deeply(eval { DatoTest::decode_json($q->{body}) }, bulk_body($A),
              'update webhook: exact API body');
    my $h = $q->{headers};
    is($h->{authorization}, 'Bearer test-token', 'Authorization header');
    is($h->{accept}, 'application/json', 'Accept header');
    is($h->{'x-api-version'}, '3', 'X-Api-Version header');
    is($h->{'content-type'}, 'application/vnd.api+json', 'Content-Type header');
    like($h->{'user-agent'} // '', qr{^ngx_http_dato_module/\d}, 'User-Agent header');
    ok(!exists $h->{'x-environment'}, 'no X-Environment for the primary environment');
}

# ------------------------------------------------------ other events --

{
    $t->mock_reset;
    my $r = post('/hook', hook($B, event_type => 'create'));
    check_accepted($r, 1, 'create webhook');
    my @p = $t->publishes;
    is(scalar @p, 1, 'create webhook: one call');
    is_deeply($p[0] && $p[0]{ids}, [$B], 'create webhook: record published');
}

$t->mock_reset;
for my $ev (qw(publish delete unpublish)) {
    my $r = post('/hook', hook($C, event_type => $ev, status => 'published'));
    check_ignored($r, "$ev event with default dato_publish_events");
}
for my $et (qw(item_type upload)) {
    my $r = post('/hook', hook($C, entity_type => $et));
    check_ignored($r, "entity_type $et");
}
{
    my $r = post('/events', hook($C, event_type => 'publish', status => 'published'));
    check_ignored($r, 'publish event on /events');
}
Time::HiRes::sleep(0.4);
is(scalar($t->publishes), 0, 'ignored webhooks sent nothing to the API');

{
    $t->mock_reset;
    my $r = post('/events', hook($C, event_type => 'unpublish'));
    check_accepted($r, 1, 'unpublish on /events');
    my @p = $t->publishes;
    is(scalar @p, 1, 'unpublish on /events: one call');
    is_deeply($p[0] && $p[0]{ids}, [$C], 'unpublish on /events: record published');
}

# --------------------------------------------------- bulk and id lists --

{
    $t->mock_reset;
    my @ids = ($A, '43012949', $C);
    my $r = post('/hook', bulk_body(@ids));
    check_accepted($r, 3, 'bulk publish body with 3 items');
    my @p = $t->publishes;
    is(scalar @p, 1, 'bulk body: one call');
    is_deeply(sorted($p[0] ? $p[0]{ids} : []), sorted(\@ids), 'bulk body: the 3 records');
    is($p[0] && $p[0]{status}, 202, 'bulk body: mock accepted');
}

{
    $t->mock_reset;
    my @ids = (DatoTest::uuid_id(10), DatoTest::uuid_id(11));
    my $r = post('/hook', { ids => \@ids });
    check_accepted($r, 2, '{"ids":[...]}');
    my @p = $t->publishes;
    is(scalar @p, 1, 'ids list: one call');
    is_deeply(sorted($p[0] ? $p[0]{ids} : []), sorted(\@ids), 'ids list: both records');
}

# ---------------------------------------------------- invalid payloads --

$t->mock_reset;
{
    my $e = check_error(post('/hook', '{"ids":["X9_l7IdvRq26r7e2wn353Q"'), 400,
                        'bad JSON');
    check_error(post('/hook', '[1]'), 422, 'non-object JSON');
    # valid JSON that is not an object: 422 like [1], not "invalid JSON"
    check_error(post('/hook', '"X9_l7IdvRq26r7e2wn353Q"'), 422, 'top-level JSON string');
    check_error(post('/hook', '{"ids":[]}'), 422, 'empty ids list');

    $e = check_error(post('/hook', '{"ids":["abc", 12, null, "X9_l7IdvRq26r7e2wn353Q"]}'),
                     422, 'invalid ids');
    my $d = $e ? $e->{detail} : '';
    like($d, qr/"abc"/, 'invalid ids: detail names "abc"');
    like($d, qr/(?<![\w.])12(?![\w.])/, 'invalid ids: detail names 12');
    like($d, qr/\bnull\b/, 'invalid ids: detail names null');
    unlike($d, qr/X9_l7IdvRq26r7e2wn353Q/, 'invalid ids: the valid id is not named');

    my $bb = bulk_body($A);
    $bb->{data}{type} = 'item_bulk_unpublish_operation';
    check_error(post('/hook', $bb), 422, 'bulk body with wrong data.type');

    $bb = bulk_body($A);
    $bb->{data}{relationships}{items}{data}[0]{type} = 'upload';
    $e = check_error(post('/hook', $bb), 422, 'bulk item of type upload');
    like($e ? $e->{detail} : '', qr/\Q$A\E/, 'bulk item of type upload: detail names the item');

    check_error(post('/hook', '{"foo":1}'), 422, 'unknown object');

    check_error(post('/hook', hook(undef)), 422,
                'webhook entity without id');

    check_error(post('/hook', '{"ids":["43012949"],"ids":["43012950"]}'), 400,
                'duplicate keys');

    for my $bad ('X9_l7IdvRq26r7e2wn353QA',      # 23 chars
                 'X9+l7IdvRq26r7e2wn353Q',       # '+' is not URL-safe base64
                 '043012949')                    # decimal with a leading zero
    {
        $e = check_error(post('/hook', { ids => [$bad] }), 422, "id $bad");
        like($e ? $e->{detail} : '', qr/\Q$bad\E/, "id $bad: detail names it");
    }
}

# ------------------------------------------------ method, content type --

{
    my $r = kept($t->json_request(method => 'GET', path => '/hook'));
    check_error($r, 405, 'GET');
    is($r->{headers}{allow}, 'POST', 'GET: Allow: POST');

    $r = kept($t->json_request(method => 'PUT', path => '/hook', headers => json_headers(),
                               body => ids_body($A)));
    check_error($r, 405, 'PUT');
    is($r->{headers}{allow}, 'POST', 'PUT: Allow: POST');

    my $body = ids_body($A);
    check_error(post('/hook', $body, 'Content-Type' => 'text/plain'), 415,
                'text/plain');

    $r = kept($t->json_request(method => 'POST', path => '/hook', body => $body));
    check_error($r, 415, 'no content type');

    check_error(post('/hook', $body, 'Content-Type' => 'application/x-www-form-urlencoded'),
                415, 'form content type');
}

Time::HiRes::sleep(0.4);
{
    my @p = $t->publishes;
    is(scalar @p, 0, 'no invalid request reached the API')
        or diag explain [ map { $_->{body} } @p ];
}

for my $ct ('application/vnd.api+json', 'application/json; charset=utf-8',
            'Application/JSON')
{
    $t->mock_reset;
    my $id = DatoTest::uuid_id(length $ct);
    my $r = post('/hook', { ids => [$id] }, 'Content-Type' => $ct);
    check_accepted($r, 1, "Content-Type $ct");
    my @p = $t->publishes;
    is_deeply($p[0] && $p[0]{ids}, [$id], "Content-Type $ct: record published");
}

# ----------------------------------------------------------- big bodies --

sub check_big {
    my ($name, $first, %req) = @_;
    $t->mock_reset;
    my @ids = ids_of($first, 3000);
    my $mark = $t->log_mark;
    my $r = kept($t->post_json('/big', { ids => \@ids }, %req));
    is($r->{status}, 202, "$name: 202") or diag $r->{raw};
    is_deeply($r->{json}, { data => [], meta => { records => 3000, status => 'queued' } },
              "$name: records 3000, queued") or diag $r->{body};
    like($t->error_log_since($mark), qr/client request body is buffered to a temporary file/,
         "$name: nginx kept the body in a temporary file");

    my $got = sub {
        my %seen;
        $seen{$_}++ for map { @{ $_->{ids} } } $t->publishes;
        return scalar keys %seen;
    };
    ok($t->wait_for(sub { $got->() >= 3000 }, 8), "$name: all 3000 ids reached the API")
        or diag 'got ' . $got->();
    Time::HiRes::sleep(0.3);
    my @p = $t->publishes;
    my @all = map { @{ $_->{ids} } } @p;
    is(scalar @all, 3000, "$name: 3000 ids sent, none twice");
    is_deeply(sorted(\@all), sorted(\@ids), "$name: exactly the ids of the body");
    is(scalar(grep { @{ $_->{ids} } > 200 } @p), 0, "$name: no call above 200 ids");
    is(scalar @p, 15, "$name: 15 calls of 200");
    is(scalar(grep { $_->{status} != 202 } @p), 0, "$name: every call accepted");
}

check_big('3000 ids in a temp file', 10000);
check_big('3000 ids chunked', 20000, chunked => 1, chunk_size => 4096);

# ---------------------------------------------------------------- dedup --

{
    $t->mock_reset;
    my $r = post('/hook', { ids => [$A, $A, $B] });
    is($r->{status}, 202, 'ids A, A, B: 202') or diag $r->{raw};
    is($r->{json} && $r->{json}{meta}{status}, 'accepted', 'ids A, A, B: accepted');
    my @p = $t->publishes;
    is(scalar @p, 1, 'ids A, A, B: one call');
    is_deeply(sorted($p[0] ? $p[0]{ids} : []), sorted([$A, $B]),
              'ids A, A, B: A and B once each');
}

{
    $t->mock_reset;
    my $id = DatoTest::uuid_id(77);
    my @r = $t->parallel_requests([ map {
        post_req('/none', hook($id, webhook_call_id => "9000$_")) } 1 .. 2 ]);
    kept($_) for @r;
    is($r[$_]{status}, 202, "same id twice in a window: webhook $_ 202") for 0, 1;
    ok($t->wait_for(sub { scalar $t->publishes }, 3), 'same id twice: a call was made');
    Time::HiRes::sleep(0.6);
    my @p = $t->publishes;
    is(scalar @p, 1, 'same id twice in a window: one call');
    is_deeply($p[0] && $p[0]{ids}, [$id], 'same id twice in a window: the id once');
}

# --------------------------------------------------------- environments --

sub env_case {
    my ($path, $name, $want, %wh) = @_;
    $t->mock_reset;
    my $id = DatoTest::uuid_id(300 + length $name);
    my $r = post($path, hook($id, %wh));
    check_accepted($r, 1, $name);
    my @p = $t->publishes;
    is(scalar @p, 1, "$name: one call");
    my $h = $p[0] ? $p[0]{headers} : {};
    if (defined $want) {
        is($h->{'x-environment'}, $want, "$name: X-Environment: $want");
    } else {
        ok(!exists $h->{'x-environment'}, "$name: no X-Environment");
    }
    is_deeply($p[0] && $p[0]{ids}, [$id], "$name: record sent");
}

env_case('/hook', 'sandbox webhook', 'sandbox-x',
         environment => 'sandbox-x', is_environment_primary => 0);
env_case('/hook', 'primary webhook named sandbox-x', undef,
         environment => 'sandbox-x', is_environment_primary => 1);
env_case('/env', 'dato_environment overrides the webhook', 'sandbox-1',
         environment => 'sandbox-z', is_environment_primary => 0);
env_case('/env', 'dato_environment on a primary webhook', 'sandbox-1',
         environment => 'main', is_environment_primary => 1);

{
    $t->mock_reset;
    my %env = (A => ['sandbox-a', DatoTest::uuid_id(401)],
               B => ['sandbox-b', DatoTest::uuid_id(402)],
               C => [undef,       DatoTest::uuid_id(403)]);
    my @r = $t->parallel_requests([ map {
        post_req('/none', hook($env{$_}[1], environment => $env{$_}[0] // 'main',
                               is_environment_primary => defined $env{$_}[0] ? 0 : 1))
        } sort keys %env ]);
    kept($_) for @r;
    is(scalar(grep { $_->{status} == 202 } @r), 3, 'three environments: all 202');
    ok($t->wait_for(sub { $t->publishes >= 3 }, 3), 'three environments: calls made');
    Time::HiRes::sleep(0.5);
    my @p = $t->publishes;
    is(scalar @p, 3, 'three environments in one window: three calls');
    my %by = map { (($_->{headers}{'x-environment'} // '(none)') => $_->{ids}) } @p;
    is_deeply(\%by, { 'sandbox-a' => [$env{A}[1]], 'sandbox-b' => [$env{B}[1]],
                      '(none)' => [$env{C}[1]] },
              'three environments: each call carries only its own ids');
}

# -------------------------------------------------------------- secrets --

is(scalar(grep { /test-token/ } @bodies), 0, 'no response body contains the token');
ok(scalar @bodies > 40, 'response bodies were collected');

$t->stop;
$t->log_unlike(qr/test-token/, 'error.log does not contain the token');

$t->done;
done_testing;
