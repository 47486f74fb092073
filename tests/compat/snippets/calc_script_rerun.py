import os

import remotior_sensus

rs = remotior_sensus.Session(n_processes=2, available_ram=1000)
folder = "$DATA/out/calc_script_rerun"
os.makedirs(folder, exist_ok=True)
inputs = [["$DATA/s2/S2_B08.tif", "nir"], ["$DATA/s2/S2_B04.tif", "red"]]
for threshold in (0.2, 0.5):
    # the same outputs at each run: Remotior replaces them
    output = rs.band_calc(
        input_raster_list=inputs,
        output_path=folder,
        expression_string=(
            f'("nir" - "red") / ("nir" + "red") @ ndvi\nwhere("ndvi" > {threshold}, 1, 0) @ mask'
        ),
    )
    print(output.check)
print(output.paths)
rs.close()
