#!/usr/bin/perl

# Signed webhooks (Standard Webhooks): dato_webhook_signing_secret lets a
# call through when one of its "v1," signatures is the HMAC-SHA256 of
# "<webhook-id>.<webhook-timestamp>.<body>" under one of the secrets and
# its timestamp is within 5 minutes of now; anything else is a 401 and
# queues nothing.  The replay guard answers a webhook-id, or DatoCMS's
# webhook_call_id, that was answered 2xx as it was, and queues it once.
# The directives' nginx -t cases are in t/14-conftest.t.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook ids_body json_headers);
use DatoSign;

my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 4 : 1;

###########################################################################
# the signer, against the specification's example and against openssl

my $VECTOR = 'whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw';

is(sign_mac($VECTOR, 'msg_p5jXN8AQM9LWM0D4loKWxJek', 1614265330,
            '{"test": 2432232314}'),
   'g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=',
   'signer: the specification\'s example signature');

SKIP: {
    my $openssl = `command -v openssl 2>/dev/null`;
    chomp $openssl;
    skip 'openssl is not installed', 1 unless $openssl;

    my $secret = whsec(32);
    my ($id, $ts, $body) = ('msg_openssl', 1700000000, '{"ids":["1"]}');
    my $hex = unpack 'H*', whsec_key($secret);
    my $t = DatoTest->new(workers => 1);
    $t->write_file('content', "$id.$ts.$body");
    my $file = $t->tmpdir . '/content';
    my $mac = `$openssl dgst -sha256 -mac HMAC -macopt hexkey:$hex -binary $file | base64`;
    chomp $mac;
    is(sign_mac($secret, $id, $ts, $body), $mac,
       'signer: the same MAC as openssl dgst -mac HMAC');
}

###########################################################################
# a location that takes signed calls only, and one that takes DatoCMS's

my $S1 = whsec(24);
my $S2 = whsec(32);
my $OTHER = whsec(24);

my $t = DatoTest->new(workers => 2);
$t->write_file('signing.key', "$S2\n");
$t->write_file('plain.secret', "s3cr3t-from-a-file\n");
$t->start_mock('--limit', 10000);

$t->run(http => <<"EOF");
    dato_api_url %%MOCK%%;
    dato_api_token test-token;

    server {
        listen 127.0.0.1:%%PORT%%;
        server_name localhost;

        location /signed {
            dato_publish;
            dato_webhook_signing_secret $S1;
            dato_webhook_signing_secret_file %%TMP%%/signing.key;
        }

        location /dato {
            dato_publish;
        }

        location /one-by-one {
            dato_publish;
            dato_batch_size 1;
            dato_webhook_signing_secret $S1;
        }

        location /file-secret {
            dato_publish;
            dato_webhook_secret_file X-Webhook-Secret %%TMP%%/plain.secret;
        }

        location /status {
            dato_publish_status;
        }
    }
EOF

# POST $body to $path with headers (a list), the answer as json_request's
sub post {
    my ($path, $body, @h) = @_;
    return $t->json_request(method => 'POST', path => $path, body => $body,
                            headers => json_headers(@h),
                            timeout => 10 * $SLOW);
}

# the mock's calls that carry $id
sub calls { return scalar $t->calls_for(@_) }

my $n = 1000;
my @refused;

# one case: sign (or not) a fresh record's body, post it, and say whether
# it went through and how often its record was sent
sub signed_case {
    my ($name, $status, %o) = @_;
    my ($id) = ids_of($n++, 1);
    my $body = ids_body($id);
    my %h = sign_headers($o{secrets} // $S1, $body, %{ $o{sign} // {} });
    delete @h{ @{ $o{drop} } } if $o{drop};
    %h = (%h, %{ $o{set} }) if $o{set};
    my $r = post('/signed', $o{body} // $body, %h);
    is($r->{status}, $status, "$name: $status") or diag $r->{body};
    push @refused, $id if $status == 401;
    return ($r, $id, \%h, $body);
}

my ($r, $id, $h, $body);

($r, $id) = signed_case('valid', 202);
ok($t->wait_published(5 * $SLOW, $id), 'valid: published');

($r, $id) = signed_case('forged', 401, secrets => $OTHER);
like($r->{body}, qr/"no signature matches"/, 'forged: says why');
ok($t->wait_for_log(qr/\[error\].*dato: webhook signature refused: no signature matches, webhook-id "msg_[a-z]+"/, 3 * $SLOW),
   'forged: logged at error, with its webhook-id');
is($r->{headers}{'content-type'}, 'application/json', 'forged: a JSON error');

($r, $id) = signed_case('no webhook-signature', 401,
                        drop => ['webhook-signature']);
like($r->{body}, qr/headers are required/, 'no webhook-signature: says why');
ok($t->wait_for_log(qr/\[info\].*dato: webhook signature refused: webhook-id, webhook-timestamp and webhook-signature headers are required/, 3 * $SLOW),
   'no webhook-signature: logged at info, as auth_basic does');

($r, $id) = signed_case('no webhook-id', 401, drop => ['webhook-id']);
($r, $id) = signed_case('no webhook-timestamp', 401,
                        drop => ['webhook-timestamp']);

($r, $id) = signed_case('stale', 401, sign => { ts => time - 330 });
like($r->{body}, qr/more than 5 minutes old/, 'stale: says why');

($r, $id) = signed_case('future', 401, sign => { ts => time + 330 });
like($r->{body}, qr/more than 5 minutes ahead/, 'future: says why');

($r, $id) = signed_case('4 minutes old', 202, sign => { ts => time - 240 });

($r, $id) = signed_case('timestamp not a number', 401,
                        set => { 'webhook-timestamp' => '17e8' });

($r, $id) = signed_case('rotation: the second secret', 202, secrets => $S2);
ok($t->wait_published(5 * $SLOW, $id), 'rotation: published');

($r, $id) = signed_case('rotation: old and new signatures', 202,
                        secrets => [$OTHER, $S2]);

($r, $id) = signed_case('an unknown version is skipped', 202,
                        sign => { extra => ['v1a,AAAA'] });

($r, $id, $h) = signed_case('altered body', 401,
                            body => ids_body(ids_of(99999, 1)));

# nothing of the refused calls reached DatoCMS
Time::HiRes::sleep(0.3 * $SLOW);
is(calls(@refused), 0, 'refused calls: nothing queued');
ok(!grep({ $_ eq ids_of(99999, 1) } map { @{ $_->{ids} } } $t->publishes),
   'altered body: its record was not sent');

###########################################################################
# dato_webhook_secret_file: the plain header's value, read from a file

{
    my ($fid) = ids_of(1500, 1);
    is(post('/file-secret', ids_body($fid),
            'X-Webhook-Secret' => 's3cr3t-from-a-file')->{status}, 202,
       'secret file: the right value passes');
    is(post('/file-secret', ids_body($fid),
            'X-Webhook-Secret' => 's3cr3t-from-a-filx')->{status}, 401,
       'secret file: another value is 401');
    is(post('/file-secret', ids_body($fid))->{status}, 401,
       'secret file: no header is 401');
}

###########################################################################
# the replay guard: a webhook-id answered 2xx is answered as it was

{
    my ($rid) = ids_of(2000, 1);
    my $b = ids_body($rid);
    my %hh = sign_headers($S1, $b);
    my $first = post('/signed', $b, %hh);
    is($first->{status}, 202, 'replay: first call 202');
    ok($t->wait_published(5 * $SLOW, $rid), 'replay: published');

    my $again = post('/signed', $b, %hh);
    is($again->{status}, $first->{status}, 'replay: the same status');
    is($again->{body}, $first->{body}, 'replay: the same body');
    Time::HiRes::sleep(0.3 * $SLOW);
    is(calls($rid), 1, 'replay: queued once');

    # a new webhook-id with the same body is a new call
    my %h2 = sign_headers($S1, $b);
    is(post('/signed', $b, %h2)->{status}, 202, 'replay: a new id passes');
    ok($t->wait_for(sub { calls($rid) == 2 }, 5 * $SLOW, 0.05),
       'replay: a new id is queued');
}

###########################################################################
# answers of every length: one that outgrows its claim's room (3 jobs),
# and one over the 4 KB kept (150 jobs), answered by its status alone

{
    my @ids = ids_of(2500, 450);
    my $b = ids_body(@ids);
    my %hh = sign_headers($S1, $b);
    my $first = post('/signed', $b, %hh);
    is($first->{status}, 202, 'long answer: 202');
    is(scalar(DatoTest::jobs_of($first)), 3, 'long answer: 3 jobs');
    my $again = post('/signed', $b, %hh);
    is($again->{body}, $first->{body}, 'long answer: replayed as it was');
    is(scalar(calls(@ids)), 3, 'long answer: queued once');

    @ids = ids_of(3500, 150);
    $b = ids_body(@ids);
    %hh = sign_headers($S1, $b);
    $first = post('/one-by-one', $b, %hh);
    is($first->{status}, 202, 'too long to keep: 202');
    ok(length($first->{body}) > 4096, 'too long to keep: over 4 KB');
    $again = post('/one-by-one', $b, %hh);
    is($again->{status}, 202, 'too long to keep: the same status again');
    is_deeply($again->{json}, { meta => { status => 'replayed' } },
              'too long to keep: {"meta":{"status":"replayed"}}');
    is(scalar(calls(@ids)), 150, 'too long to keep: queued once');
}

###########################################################################
# DatoCMS's own retries: the same webhook_call_id is queued once

{
    my ($did) = ids_of(3000, 1);
    my $b = hook($did, webhook_call_id => '900000001');
    my $first = post('/dato', $b);
    is($first->{status}, 202, 'call id: first call 202');
    ok($t->wait_published(5 * $SLOW, $did), 'call id: published');

    my $retry = post('/dato', hook($did, webhook_call_id => '900000001',
                                   attempted_auto_retries_count => 1));
    is($retry->{status}, 202, 'call id: the retry is answered 202');
    is($retry->{body}, $first->{body}, 'call id: as the first was');
    Time::HiRes::sleep(0.3 * $SLOW);
    is(calls($did), 1, 'call id: queued once');

    # one refused (here by DatoCMS: a 502) is queued when it comes again
    my ($rid) = ids_of(3100, 1);
    $t->mock_faults({ status => 422, code => 'INVALID_FIELD' });
    my $bad = post('/dato', hook($rid, webhook_call_id => '900000002'));
    is($bad->{status}, 502, 'refused call id: 502');
    my $ok = post('/dato', hook($rid, webhook_call_id => '900000002'));
    is($ok->{status}, 202, 'refused call id: the retry is queued');
    ok($t->wait_published(5 * $SLOW, $rid), 'refused call id: published');
    is(calls($rid), 2, 'refused call id: sent twice, once per call');
}

###########################################################################
# no secret in any log line or on the status page

{
    my $page = $t->request(method => 'GET', path => '/status')->{body} // '';
    my $prom = $t->request(method => 'GET',
                           path => '/status?format=prometheus')->{body} // '';
    my $log = $t->error_log;

    # nginx's own debug lines show request headers as they came: not ours
    my $ours = join "\n", grep { !/\[debug\]/ } split /\n/, $log;
    unlike($ours . $page . $prom, qr/s3cr3t-from-a-file/,
           'the secret file\'s value is in no line of the module');

    for my $s ($S1, $S2) {
        (my $b64 = $s) =~ s/^whsec_//;
        my $hex = unpack 'H*', whsec_key($s);
        for my $where (['the error log', $log], ['the status page', $page],
                       ['the metrics', $prom])
        {
            unlike($where->[1], qr/\Q$b64\E|\Q$hex\E/i,
                   "a secret is not in $where->[0]");
        }
    }

    like($page, qr/"rejected":\{[^}]*"401":\s*(\d+)/,
         'status: the 401s are counted');
}

$t->done;

done_testing;
