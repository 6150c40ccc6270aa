#!/usr/bin/perl

# The Debian package: builds libnginx-mod-http-dato with t/deb/build.sh
# (debian/, Debian's nginx module tooling), installs it on this machine,
# checks its files, its dependencies and the modules-enabled symlink,
# enables the module the way Debian's nginx.conf does (include
# /etc/nginx/modules-enabled/*.conf, no load_module of our own), runs a
# webhook through the packaged nginx and the installed module, and purges
# the package again.
#
# Changes the system (dpkg -i, dpkg --purge): runs only with
# DATO_TEST_DEB=1, as root.

use strict;
use warnings;

use FindBin;
use lib "$FindBin::Bin/lib";
use Test::More;
use Time::HiRes ();

BEGIN {
    plan skip_all => 'set DATO_TEST_DEB=1 to build, install and test the'
                   . ' Debian package (needs root; changes the system)'
        unless $ENV{DATO_TEST_DEB};
}

use DatoTest;

BAIL_OUT('DATO_TEST_DEB=1 needs root (dpkg -i)') if $> != 0;

my $PKG     = 'libnginx-mod-http-dato';
my $SO      = '/usr/lib/nginx/modules/ngx_http_dato_module.so';
my $SNIPPET = '/usr/share/nginx/modules-available/mod-http-dato.conf';
my $ENABLED = '/etc/nginx/modules-enabled/50-mod-http-dato.conf';
my $REPO    = DatoTest::repo_root();

sub sh_quote { my $s = shift; $s =~ s/'/'\\''/g; "'$s'" }

# runs a command, returns (exit code, output with stderr)
sub run_cmd {
    my $cmd = join ' ', map { sh_quote($_) } @_;
    my $out = `$cmd 2>&1`;
    return ($? == -1 ? 255 : $? >> 8, $out);
}

sub tail_lines {
    my ($text, $n) = @_;
    my @l = split /\n/, $text // '';
    @l = @l[-$n .. -1] if @l > $n;
    return join "\n", @l;
}

sub slurp {
    my ($path) = @_;
    open my $fh, '<', $path or return undef;
    local $/;
    return scalar <$fh>;
}

sub pkg_status {
    my (undef, $out) = run_cmd('dpkg-query', '-W', '-f=${Status}', $PKG);
    return $out // '';
}

# a package left installed by someone else stays installed afterwards
my $was_installed = pkg_status() =~ /install ok installed/;
diag("$PKG was already installed: it is replaced and left installed")
    if $was_installed;

###########################################################################
# build

my $t0 = Time::HiRes::time();
my ($rc, $out) = run_cmd('bash', "$REPO/t/deb/build.sh");
my $took = Time::HiRes::time() - $t0;
if (!is($rc, 0, 't/deb/build.sh succeeds')) {
    diag(tail_lines($out, 40));
    BAIL_OUT('package build failed');
}
note(sprintf 'package built in %.1f s', $took);

my ($deb) = $out =~ m{^(/\S+/\Q$PKG\E_[^/\s]+\.deb)\s*\z}m;
if (!ok(defined $deb && -f $deb, 'build.sh names the .deb it built')) {
    diag(tail_lines($out, 20));
    BAIL_OUT('no .deb in the output of build.sh');
}
like($deb, qr{/build/deb/\Q$PKG\E_\d[^/]*_[a-z0-9]+\.deb\z}, '.deb is in build/deb/');

my ($st, $info) = run_cmd('dpkg-deb', '-f', $deb, 'Package', 'Version', 'Depends');
like($info, qr/^Package: \Q$PKG\E$/m, 'package name');
like($info, qr/^Version: 0\.1\.0-1$/m, 'version 0.1.0-1');

###########################################################################
# install

my $installed = 0;

sub purge {
    return unless $installed;
    $installed = 0;
    my ($rc, $out) = run_cmd('dpkg', '--purge', $PKG);
    diag("dpkg --purge $PKG failed:\n$out") if $rc;
    return $rc;
}

# whatever happens below, the machine is left as it was
END {
    local ($?, $!, $@);
    purge() unless $was_installed;
}

($rc, $out) = run_cmd('dpkg', '-i', $deb);
$installed = 1;
if (!is($rc, 0, 'dpkg -i succeeds')) {
    diag($out);
    BAIL_OUT('dpkg -i failed');
}
like(pkg_status(), qr/install ok installed/, 'package is installed');

my (undef, $files) = run_cmd('dpkg', '-L', $PKG);
my %files = map { $_ => 1 } split /\n/, $files;
ok($files{$SO}, "dpkg -L lists $SO") or diag $files;
ok($files{$SNIPPET}, "dpkg -L lists $SNIPPET") or diag $files;
ok(-f $SO, 'module installed');

# the monitoring of contrib/, as docs, not gzipped: tools read them
for my $doc (qw(contrib/grafana/dato.json contrib/prometheus/dato-rules.yml)) {
    my $path = "/usr/share/doc/$PKG/$doc";
    ok($files{$path}, "dpkg -L lists $path") or diag $files;
    is(slurp($path), slurp("$REPO/$doc"), "$path is the repository's $doc");
}
is(slurp($SNIPPET), "load_module modules/ngx_http_dato_module.so;\n",
   'the snippet loads the module from the modules directory');

ok(-l $ENABLED, "postinst enabled the module: $ENABLED");
is(readlink($ENABLED) // '', $SNIPPET, 'the symlink points at the snippet');

# the ABI dependency that ties the module to this exact nginx build
my $abi_file = slurp('/usr/share/nginx/src/debian/libnginx-mod.abisubstvars') // '';
my ($abi) = $abi_file =~ /^nginx:abi=(\S+)/m;
ok(defined $abi, "nginx-dev names its ABI ($abi)") or diag $abi_file;
my (undef, $depends) = run_cmd('dpkg-query', '-W', '-f=${Depends}', $PKG);
note("Depends: $depends");
like($depends, qr/(?:^|,\s*)\Q$abi\E(?:,|$)/, "Depends has $abi");
like($depends, qr/\blibcurl4\b/, 'Depends has libcurl4 (shlibs)');
like($depends, qr/\blibjansson4\b/, 'Depends has libjansson4 (shlibs)');
my (undef, $provides) = run_cmd('dpkg-query', '-W', '-f=${Provides}', 'nginx');
like($provides, qr/\Q$abi\E/, "the installed nginx provides $abi");

# Debian's own nginx.conf (include /etc/nginx/modules-enabled/*.conf, the
# default prefix) accepts the module
SKIP: {
    my $main = slurp('/etc/nginx/nginx.conf') // '';
    skip '/etc/nginx/nginx.conf does not include modules-enabled', 1
        unless $main =~ m{^\s*include\s+/etc/nginx/modules-enabled/\*\.conf;}m;
    my ($rc, $out) = run_cmd('/usr/sbin/nginx', '-t', '-q');
    is($rc, 0, "nginx -t with the system's nginx.conf and the module enabled")
        or diag $out;
}

###########################################################################
# a webhook through the packaged nginx, with the module loaded by the
# installed snippet only

my $t = DatoTest->new(no_module => 1, workers => 1);

# The harness runs nginx with -p <tmp>/, and load_module resolves relative
# paths ("modules/ngx_http_dato_module.so") against the prefix: point
# <tmp>/modules at the packaged module directory, as the default prefix
# /usr/share/nginx does with its own modules symlink.
symlink('/usr/lib/nginx/modules', $t->tmpdir . '/modules')
    or die "symlink: $!\n";

$t->start_mock;
$t->run(main => 'include /etc/nginx/modules-enabled/*.conf;',
        http => DatoTest::api_conf(server => <<'EOF'));
        location = /webhooks/dato {
            dato_publish;
            dato_batch_window 100ms;
        }
EOF

unlike($t->read_file('nginx.conf'), qr/^\s*load_module/m,
       'the test configuration has no load_module of its own');

my $id = DatoTest::uuid_id(8001);
my $r = $t->post_json('/webhooks/dato', DatoTest::hook($id));
is($r->{status}, 202, 'webhook answered 202') or diag $r->{raw};
is(ref $r->{json} eq 'HASH' && $r->{json}{meta}{status}, 'accepted',
   'meta.status accepted');
is(ref $r->{json} eq 'HASH' && ref $r->{json}{data} eq 'ARRAY'
       && $r->{json}{data}[0]{type}, 'job', 'the answer carries the job');

my @req = $t->publishes;
is(scalar @req, 1, 'one bulk publish call');
is($req[0]{status}, 202, 'the mock accepted the call');
is_deeply($req[0]{ids}, [$id], 'the mock got the record');
is($req[0]{headers}{authorization}, 'Bearer test-token', 'with the token');

$t->done;

###########################################################################
# remove, purge: Debian's conventions for the modules-enabled symlink

SKIP: {
    skip "$PKG was installed before the test: left installed", 6 if $was_installed;

    ($rc, $out) = run_cmd('dpkg', '-r', $PKG);
    is($rc, 0, 'dpkg -r succeeds') or diag $out;
    ok(!-e $SO, 'dpkg -r removes the module');
    ok(!-l $ENABLED && -l "$ENABLED.removed",
       'dpkg -r keeps the symlink as .removed (the admin\'s choice survives)');

    $rc = purge();
    is($rc, 0, 'dpkg --purge succeeds');
    unlike(pkg_status(), qr/installed/, 'package is gone');
    ok(!-l $ENABLED && !-l "$ENABLED.removed",
       'dpkg --purge removes the symlink');
}

done_testing;
