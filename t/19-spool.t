#!/usr/bin/perl

# dato_spool_file: what a fast stop could not send is written to the spool
# (a temporary file, fsync, rename), and read back and sent after the next
# start; a corrupt or foreign spool file is refused whole and moved aside.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();
use DatoTest qw(ids_of ids_body post_req);

my $SLOW = $ENV{TEST_NGINX_USE_VALGRIND} ? 4 : 1;

# the configuration of every case, with the API token $token (test-token)
sub conf {
    my ($token) = @_;
    return DatoTest::api_conf(token => $token, server => <<'EOF',
        location /hook {
            dato_publish;
            dato_publish_wait none;
            dato_job_poll off;
        }
EOF
        http => '    dato_spool_file %%TMP%%/spool/dato;');
}

# a harness (one worker) with a spool directory the workers' user writes
sub spool_harness {
    my $t = DatoTest->new(workers => 1);
    mkdir $t->tmpdir . '/spool';
    chmod 0777, $t->tmpdir . '/spool';
    return $t;
}

sub spool_files {
    my ($t, $re) = @_;
    opendir(my $d, $t->tmpdir . '/spool') or return ();
    my @f = sort grep { /$re/ } readdir $d;
    closedir $d;
    return @f;
}

# the API refuses connections for $s seconds; returns when it is back
sub api_down {
    my ($t, $s) = @_;
    my $up = Time::HiRes::time() + $s + 0.5;
    $t->mock_config({ down_ms => int($s * 1000) });
    return $up;
}

sub until_up {
    my ($up) = @_;
    my $d = $up - Time::HiRes::time();
    Time::HiRes::sleep($d) if $d > 0;
}

###########################################################################
# 1. a fast stop with 60 records held (API down), then a start: 0 lost

{
    my $t = spool_harness();
    $t->start_mock;
    $t->run(http => conf());

    my $up = api_down($t, 4 * $SLOW);
    my @ids = ids_of(3_000_000, 60);
    my @res = $t->parallel_requests([ map { post_req('/hook', ids_body(@ids[$_ * 10 .. $_ * 10 + 9])) } 0 .. 5 ],
                                    timeout => 10 * $SLOW);
    is(scalar(grep { $_->{status} == 202 } @res), 6, 'spool: 6 webhooks of 10 records answered 202');

    $t->stop_fast;
    my @files = spool_files($t, qr/^dato\.\d+\z/);
    is(scalar @files, 1, 'spool: one spool file after the fast stop (' . join(' ', @files) . ')');
    is(scalar(spool_files($t, qr/\.tmp\z/)), 0, 'spool: no temporary file left');
    my $text = $t->read_file("spool/$files[0]") // '';
    like($text, qr/\Angx_http_dato spool 1\n/, 'spool: the file has its head');
    like($text, qr/\nend \d+ [0-9a-f]{8}\n\z/, 'spool: ... and its trailer');
    unlike($text, qr/test-token/, 'spool: no token in the file');
    is(scalar(grep { index($text, "$_\n") >= 0 } @ids), 60, 'spool: all 60 records in it');
    is(scalar($t->gave_up_lines), 0, 'spool: nothing given up at the stop');
    $t->log_like(qr/\[warn\].*dato: 60 records spooled/, 'spool: the stop says so');

    until_up($up);
    $t->run(http => conf());
    ok($t->wait_published(20 * $SLOW, @ids), 'spool: all 60 records published after the start');
    is(scalar(spool_files($t, qr/^dato\./)), 0, 'spool: the spool file is gone once read');
    $t->log_like(qr/dato: read back the spool file/, 'spool: the start says so');
    is(scalar($t->gave_up_lines), 0, 'spool: nothing given up');

    $t->done;
}

###########################################################################
# 2. a corrupt spool file: refused whole, moved aside, nothing sent

{
    my $t = spool_harness();
    $t->write_file('spool/dato.4242', "ngx_http_dato spool 1\nrecords 00000000 - 1\n43012949\n");
    $t->write_file('spool/dato.4243', "something else entirely\n");
    $t->start_mock;
    $t->run(http => conf());

    ok($t->wait_for(sub { scalar(spool_files($t, qr/\.bad\z/)) == 2 }, 5 * $SLOW),
       'corrupt: both files moved aside (.bad)');
    is(scalar(spool_files($t, qr/^dato\.\d+\z/)), 0, 'corrupt: none left to read');
    $t->log_like(qr/\[error\].*dato: the spool file ".*dato\.4242" is not a whole spool file.*refused/,
                 'corrupt: a file cut short is refused, at error');
    $t->log_like(qr/\[error\].*dato: the spool file ".*dato\.4243"/, 'corrupt: so is a foreign one');
    Time::HiRes::sleep(0.5);
    is(scalar($t->publishes), 0, 'corrupt: nothing of it was sent');

    $t->done;
}

###########################################################################
# 3. a spool file of another configuration (another token): its records
#    are not sent with this token, but named as given up

{
    my $t = spool_harness();
    $t->start_mock;
    $t->run(http => conf('other-token'));

    my $up = api_down($t, 3 * $SLOW);
    my @ids = ids_of(3_100_000, 5);
    my $r = $t->post_json('/hook', ids_body(@ids));
    is($r->{status}, 202, 'foreign: webhook answered 202');
    $t->stop_fast;
    is(scalar(spool_files($t, qr/^dato\.\d+\z/)), 1, 'foreign: spooled by the first configuration');

    until_up($up);
    $t->run(http => conf('test-token'));
    ok($t->wait_for(sub { scalar(spool_files($t, qr/^dato\./)) == 0 }, 5 * $SLOW),
       'foreign: the file is read and gone');
    my $gave = $t->gave_up_ids;
    is(scalar(grep { $gave->{$_} } @ids), 5, 'foreign: its 5 records are named as given up');
    $t->log_like(qr/\[error\].*no location of this configuration uses their token and URL/,
                 'foreign: with the reason');
    is(scalar($t->publishes), 0, 'foreign: nothing sent with the other token');

    $t->done;
}

###########################################################################
# 4. each action's records come back to their own action (and stage)

{
    my $t = spool_harness();
    my $conf = DatoTest::api_conf(server => <<'EOF',
        location /hook      { dato_publish;  dato_publish_wait none; }
        location /takedown  { dato_unpublish; dato_publish_wait none; }
        location /review    { dato_move_to_stage review;
                              dato_publish_wait none; }
        location /translate { dato_move_to_stage translate;
                              dato_publish_wait none; }
EOF
        http => '    dato_spool_file %%TMP%%/spool/dato;'
                . "\n    dato_job_poll off;");
    $t->start_mock;
    $t->run(http => $conf);

    my $up = api_down($t, 3 * $SLOW);
    my %ids = (hook => [ids_of(3_200_000, 3)], takedown => [ids_of(3_200_100, 3)],
               review => [ids_of(3_200_200, 3)], translate => [ids_of(3_200_300, 3)]);
    for my $path (sort keys %ids) {
        is($t->post_json("/$path", ids_body(@{ $ids{$path} }))->{status}, 202,
           "actions: /$path answered 202");
    }
    $t->stop_fast;
    is(scalar(spool_files($t, qr/^dato\.\d+\z/)), 1, 'actions: spooled');

    until_up($up);
    $t->run(http => $conf);
    my $all = [map { @$_ } values %ids];
    ok($t->wait_for(sub {
           my %sent = map { $_ => 1 } map { @{ $_->{ids} } }
                      grep { $_->{status} == 202 } $t->mock_requests;
           !grep { !$sent{$_} } @$all;
       }, 20 * $SLOW, 0.1), 'actions: every record sent after the start');

    # where each record went: the path, and the stage of a move
    my %went;
    for my $c (grep { $_->{status} == 202 && $_->{path} =~ m{^/items/bulk/} }
               $t->mock_requests)
    {
        my $d = DatoTest::decode_json($c->{body})->{data};
        my $where = $c->{path} =~ s{^/items/bulk/}{}r;
        $where .= ":$d->{attributes}{stage}" if $d->{attributes};
        $went{$_} = $where for @{ $c->{ids} };
    }
    my %want = (hook => 'publish', takedown => 'unpublish',
                review => 'move-to-stage:review',
                translate => 'move-to-stage:translate');
    for my $path (sort keys %ids) {
        is_deeply([map { $went{$_} // '-' } @{ $ids{$path} }],
                  [($want{$path}) x 3], "actions: the records of /$path as $want{$path}");
    }
    is(scalar($t->gave_up_lines), 0, 'actions: nothing given up');

    $t->done;
}

done_testing;
