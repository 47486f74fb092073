import os

import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
catalog = rs.bandset_catalog()
catalog.create_bandset(
    ["$DATA/s2", "S2_"], wavelengths=["Sentinel-2"], bandset_number=1, bandset_name="first"
)
catalog.create_bandset(
    ["$DATA/s2", "S2_B0"], wavelengths=["Sentinel-2"], bandset_number=2, bandset_name="second"
)
folder = "$DATA/out/new_forbandsets"
os.makedirs(folder, exist_ok=True)
output = rs.band_calc(
    output_path=folder,
    expression_string='forbandsets[1:2]\n"bandset#b4" - "bandset#b1" @ diff_#BANDSET#',
    bandset_catalog=catalog,
)
print(output.check)
print(output.paths)
rs.close()
