// Which of the pod's registry credentials an image is pulled with: the controller sends one per
// registry host, or per repository for a path-scoped pull secret; the longest match wins.
import { describe, expect, it } from 'vitest';
import { credentialFor } from '../src/pod/image-manager.js';

const c = (registry: string) => ({ registry, username: registry, password: 'p', identityToken: '' });

describe('credentialFor', () => {
  const creds = [c('reg.example.com:5000'), c('reg.example.com:5000/team/app'), c('docker.io'), c('other.example.com/')];
  const who = (ref: string) => credentialFor(creds, ref)?.username;

  it('the host credential for any repository on it; a repository credential for that repository only', () => {
    expect(who('reg.example.com:5000/team/app:1')).toBe('reg.example.com:5000/team/app');
    expect(who('reg.example.com:5000/team/app@sha256:' + 'a'.repeat(64))).toBe('reg.example.com:5000/team/app');
    expect(who('reg.example.com:5000/team/application:1')).toBe('reg.example.com:5000');
    expect(who('reg.example.com:5000/other:1')).toBe('reg.example.com:5000');
  });

  it('no credential for another host or port, nor for a host that merely starts the same', () => {
    expect(who('reg.example.com/app:1')).toBeUndefined();
    expect(who('reg.example.com:5001/app:1')).toBeUndefined();
    expect(who('reg.example.com.evil.io/app:1')).toBeUndefined();
  });

  it('Docker Hub names, short or long, are docker.io', () => {
    expect(who('busybox')).toBe('docker.io');
    expect(who('index.docker.io/library/busybox:1')).toBe('docker.io');
    expect(who('other.example.com/x')).toBe('other.example.com/');
  });
});
