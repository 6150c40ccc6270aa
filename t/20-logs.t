#!/usr/bin/perl

# The error log at Debian's default level, "error_log ... error": a record
# given up, a 401 refusal, a 429 pause and an API that fails are each said
# once; a publish that goes well says nothing at that level.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of hook);

my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 4 : 1;

my $t = DatoTest->with_mock(workers => 1, log_level => 'error',
                            server => <<'EOF');
        location /hook {
            dato_publish;
            dato_publish_wait job;
            dato_batch_window 100ms;
            dato_publish_timeout 7s;
        }
EOF

# the lines written since $mark, and those of them that match $re
sub lines_since {
    my ($mark, $re) = @_;
    return grep { /$re/ } split /\n/, $t->error_log_since($mark);
}

###########################################################################
# a publish that goes well: nothing at error level

{
    my ($id) = ids_of(100, 1);
    my $mark = $t->log_mark;
    my $r = $t->post_json('/hook', hook($id), timeout => 10 * $SLOW);
    is($r->{status}, 202, 'ok: webhook answered 202') or diag $r->{body} // $r->{error};
    ok($t->wait_published(5 * $SLOW, $id), 'ok: the record is published');
    Time::HiRes::sleep(0.5);
    is($t->error_log_since($mark), '', 'ok: no line at error level')
        or diag $t->error_log_since($mark);
}

###########################################################################
# a record refused for good: one [error] gave-up line naming it

{
    my ($id) = ids_of(200, 1);
    my $mark = $t->log_mark;
    $t->mock_faults({ status => 422, code => 'INVALID_FIELD' });
    my $r = $t->post_json('/hook', hook($id), timeout => 10 * $SLOW);
    is($r->{status}, 502, 'given up: webhook answered 502') or diag $r->{body} // $r->{error};
    ok($t->wait_for_log(qr/gave up publishing/, 3 * $SLOW, $mark), 'given up: logged');
    Time::HiRes::sleep(0.5);
    my @l = lines_since($mark, qr/\S/);
    is(scalar(@l), 1, 'given up: one line') or diag join "\n", @l;
    like($l[0] // '', qr/\[error\].*dato: gave up publishing 1 record after 1 attempt \(DatoCMS refused the call; status 422, code INVALID_FIELD.*records \(part 1 of 1\): \Q$id\E$/,
         'given up: [error], singular, with the code and the record');
    $t->mock_reset;
}

###########################################################################
# a 401: the token is refused, once

{
    my @ids = ids_of(300, 3);
    my $mark = $t->log_mark;
    $t->mock_faults({ status => 401, code => 'INVALID_AUTHORIZATION_HEADER' });
    my $r = $t->post_json('/hook', DatoTest::ids_body(@ids), timeout => 10 * $SLOW);
    is($r->{status}, 502, '401: webhook answered 502') or diag $r->{body} // $r->{error};
    ok($t->wait_for_log(qr/status 401/, 3 * $SLOW, $mark), '401: logged');
    Time::HiRes::sleep(0.5);
    my @l = lines_since($mark, qr/\S/);
    is(scalar(@l), 1, '401: one line') or diag join "\n", @l;
    like($l[0] // '', qr/\[error\].*dato: gave up publishing 3 records after 1 attempt \(DatoCMS refused the call; status 401, code INVALID_AUTHORIZATION_HEADER/,
         '401: [error], with the status and the code');
    $t->mock_reset;
}

###########################################################################
# a 429: the pause is said once, the record is published after it

{
    my ($id) = ids_of(400, 1);
    my $mark = $t->log_mark;
    $t->mock_faults({ status => 429, reset => 1 });
    my $r = $t->post_json('/hook', hook($id), timeout => 10 * $SLOW);
    is($r->{status}, 202, '429: webhook answered 202') or diag $r->{body} // $r->{error};
    ok($t->wait_published(5 * $SLOW, $id), '429: the record is published');
    Time::HiRes::sleep(0.5);
    my @l = lines_since($mark, qr/\S/);
    is(scalar(@l), 1, '429: one line') or diag join "\n", @l;
    like($l[0] // '', qr/\[error\].*dato: the API answered 429 .*API paused \d+ ms/,
         '429: [error] "API paused N ms"');
    $t->mock_reset;
}

###########################################################################
# an API that fails (500, then 503): said once, at error,
# and the record is published when it answers again

{
    my ($id) = ids_of(500, 1);
    my $mark = $t->log_mark;
    $t->mock_faults([ { status => 500 }, { status => 503 } ]);
    my $r = $t->post_json('/hook', hook($id), timeout => 10 * $SLOW);
    is($r->{status}, 202, '5xx: webhook answered 202') or diag $r->{body} // $r->{error};
    ok($t->wait_published(5 * $SLOW, $id), '5xx: the record is published');
    is(scalar($t->calls_for($id)), 3, '5xx: after 2 failed calls');
    Time::HiRes::sleep(0.5);
    my @l = lines_since($mark, qr/\S/);
    is(scalar(@l), 1, '5xx: one line') or diag join "\n", @l;
    like($l[0] // '', qr/\[error\].*dato: the API fails \(500 .*logged once/,
         '5xx: [error] "the API fails", with the status');
    $t->mock_reset;
}

$t->done;
done_testing;
